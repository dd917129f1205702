"""``lessee agent --serve``: after attest -> release -> load, the agent serves the enclave's
encrypted token stream with the attested key. A real broker on loopback, the agent as a real
subprocess on emulated hardware, and ``lessee client generate`` in both verification modes."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.cli import agent as agent_cli
from agent.cli.agent import load_generator
from agent.cli.main import main
from agent.client import ClientClockRefused, EnclaveClient
from agent.demo import demo_policy, make_model
from agent.loader import seal_model
from agent.loader.keyfile import write_key_file
from attest.errors import InputError
from tests.integration.conftest import Harness

REPO = Path(__file__).resolve().parents[2]
MODEL_ID = "served"
#: The served agent's ``--replay-window`` (narrower than the default, to see it take effect).
REPLAY_WINDOW_S = 30


@pytest.fixture
def sealed_model(harness: Harness, tmp_path: Path) -> tuple[Path, str]:
    """A sealed model registered with the harness broker; (sealed dir, policy file)."""
    make_model(tmp_path / "model")
    dek = bytearray(os.urandom(32))
    sealed = seal_model(
        tmp_path / "model", tmp_path / "sealed", dek, model_id=MODEL_ID, model_version=1,
        rng=os.urandom,
    )  # fmt: skip
    key_file = tmp_path / "model.key"
    write_key_file(key_file, dek, key_id="k", model_id=MODEL_ID, model_version=1,
                   manifest_digest=sealed.manifest_digest)  # fmt: skip
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps(
            demo_policy(list(harness.pki.root_fingerprints().values()), sealed.manifest_digest)
        )
    )
    assert harness.server is not None
    assert main(["broker", "register", "--target", harness.server.target, "--key-file",
                 str(key_file), "--policy", str(policy)]) == 0  # fmt: skip
    return tmp_path / "sealed", str(policy)


@pytest.fixture
def served(
    harness: Harness, sealed_model: tuple[Path, str]
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """The agent subprocess, serving; yields (its target, the process)."""
    assert harness.server is not None
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli.main", "agent", "--broker", harness.server.target,
         "--model-id", MODEL_ID, "--sealed", str(sealed_model[0]), "--emulate",
         "--emulation-dir", str(harness.pki_dir), "--serve", "127.0.0.1:0", "--generator", "echo",
         "--replay-window", str(REPLAY_WINDOW_S)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = []
        for _ in range(20):
            line = proc.stdout.readline()
            lines.append(line)
            if "serving encrypted token streams on" in line or not line:
                break
        assert "serving encrypted token streams on 127.0.0.1:" in lines[-1], lines
        assert any("attestation affirming" in x for x in lines), lines
        yield lines[-1].split(" on ", 1)[1].split(";")[0], proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_agent_serves_the_attested_key_to_both_kinds_of_client(
    harness: Harness,
    sealed_model: tuple[Path, str],
    served: tuple[str, subprocess.Popen[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target, proc = served
    pem = tmp_path / "broker.pem"
    pem.write_bytes(
        harness.keys.result_key.public_key().public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
        )
    )
    base = ["client", "generate", "--target", target, "--prompt", "sealed to the enclave",
            "--log-key", str(harness.state / "log.vkey")]  # the served log proof must verify too  # fmt: skip
    # Pinning the broker: the bundle's EAR is the one the broker issued for this key.
    assert main([*base, "--broker-key", str(pem)]) == 0
    assert capsys.readouterr().out == "sealed to the enclave\n"
    # Trusting no broker: the bundle carries the evidence the broker appraised, and the client
    # appraises it under the same policy with the emulation roots offered.
    policy = sealed_model[1]
    assert main([*base, "--policy", policy, "--trust-emulation", str(harness.pki_dir)]) == 0
    assert capsys.readouterr().out == "sealed to the enclave\n"
    # --replay-window took effect: a client whose clock is 60 s behind is refused before any
    # response (the default window of 120 s would have let it through); 20 s behind is fine.
    key = harness.keys.result_key.public_key()
    now = datetime.now(UTC)

    async def generate(skew_s: int) -> str:
        client = EnclaveClient(
            target, bundle_check=key, clock=lambda: now - timedelta(seconds=skew_s)
        )
        try:
            return await client.generate_text("clock check")
        finally:
            await client.close()

    assert asyncio.run(generate(20)) == "clock check"
    with pytest.raises(ClientClockRefused, match="check this machine's clock"):
        asyncio.run(generate(2 * REPLAY_WINDOW_S))
    # SIGTERM: the service stops and the agent exits 0.
    proc.terminate()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "lessee agent: stopped" in out


def test_serve_flags_are_checked_before_anything_is_attested(
    harness: Harness,
    sealed_model: tuple[Path, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    assert harness.server is not None
    challenges: list[str] = []
    real_challenge = harness.server.broker.challenge

    def challenge(model_id: str) -> Any:
        challenges.append(model_id)
        return real_challenge(model_id)

    monkeypatch.setattr(harness.server.broker, "challenge", challenge)
    base = ["agent", "--broker", harness.server.target, "--model-id", MODEL_ID, "--sealed",
            str(sealed_model[0]), "--emulate", "--emulation-dir", str(harness.pki_dir)]  # fmt: skip
    assert main([*base, "--serve", "127.0.0.1:0"]) == 2
    assert "--serve and --generator go together" in capsys.readouterr().err
    assert main([*base, "--generator", "echo"]) == 2
    assert main([*base, "--tls-cert", "x.pem"]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
    assert main([*base, "--replay-window", "30"]) == 2
    assert "--replay-window goes with --serve" in capsys.readouterr().err
    serve = [*base, "--serve", "127.0.0.1:0", "--generator", "echo"]
    for bad in ("0", str(agent_cli.MAX_REPLAY_WINDOW_S + 1)):
        assert main([*serve, "--replay-window", bad]) == 2
        assert "--replay-window must be 1..3600 seconds" in capsys.readouterr().err
    # Review: the --serve address and the TLS pair were used only after the release. A bad
    # address, a port in use and a TLS file that is not a matching PEM pair are refused first.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        in_use = f"127.0.0.1:{busy.getsockname()[1]}"
        assert main([*base, "--serve", in_use, "--generator", "echo"]) == 2
        assert f"lessee: error: --serve {in_use}: the port is in use" in capsys.readouterr().err
    assert main([*base, "--serve", "nohost", "--generator", "echo"]) == 2
    assert "--serve address 'nohost' is not host:port" in capsys.readouterr().err
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not PEM\n")
    assert main([*serve, "--tls-cert", str(not_pem), "--tls-key", str(not_pem)]) == 2
    assert f"{not_pem}: not a PEM certificate chain" in capsys.readouterr().err
    # Each refusal came before Challenge (so before Attest): the one-shot release is unspent.
    assert challenges == []
    assert harness.server.broker.log.size == 0
    # (The count would have seen one: an agent that goes on to attest asks for a challenge.)
    assert main([*base, "--measurement", "00" * 48]) == 1
    assert challenges == [MODEL_ID]


def test_replay_window_constants_match_the_stream_layer() -> None:
    from sealing.stream import replay

    assert agent_cli.MAX_REPLAY_WINDOW_S == replay.MAX_REPLAY_WINDOW_S
    assert agent_cli.DEFAULT_REPLAY_WINDOW_S == replay.DEFAULT_REPLAY_WINDOW_S


def test_generator_specs() -> None:
    from agent.enclave.generator import EchoGenerator

    assert isinstance(load_generator("echo", None), EchoGenerator)  # type: ignore[arg-type]
    for bad in ("", "nomodule", "json:", ":x", "no.such.module:f", "json:no_such_attr"):
        with pytest.raises(InputError):
            load_generator(bad, None)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="no generate"):
        load_generator("builtins:str", None)  # type: ignore[arg-type]
    # A callable that cannot be FACTORY(model): refused while resolving the spec, before the
    # agent attests (it once failed as an internal error after the one-shot release).
    from agent.cli.agent import generator_factory

    with pytest.raises(InputError, match="does not take one argument"):
        generator_factory("os:getcwd")
    with pytest.raises(InputError, match=r"the factory failed \(ZeroDivisionError\)"):
        load_generator("x", None, lambda _model: 1 // 0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "suite"),
    [("x25519", "X25519_SHA256_AES256GCM"), ("xwing", "MLKEM768_X25519_SHA256_AES256GCM")],
)
def test_agent_suite_option(
    harness: Harness,
    sealed_model: tuple[Path, str],
    capsys: pytest.CaptureFixture[str],
    name: str,
    suite: str,
) -> None:
    """The issue's classical option is reachable from the command line; the key is released to
    that suite (the broker seals to whatever suite the attested key is)."""
    assert harness.server is not None
    code = main(["agent", "--broker", harness.server.target, "--model-id", MODEL_ID, "--sealed",
                 str(sealed_model[0]), "--emulate", "--emulation-dir", str(harness.pki_dir),
                 "--suite", name, "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["suite"] == suite and out["tensors"] > 0
