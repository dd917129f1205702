"""Broker state directory (keys made once, 0600, refused when loose) and the CLI commands."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.broker.config import (
    BrokerConfig,
    encode_note_private_key,
    parse_note_private_key,
    prepare_state_dir,
)
from agent.cli.main import main
from attest.ear import public_key_from_jwk
from attest.errors import InputError
from attest.log.keys import load_verifier
from attest.log.note import NoteSigner
from tests.integration.conftest import MODEL, Harness

REPO = Path(__file__).resolve().parents[2]


def test_state_dir_keys_are_made_once_and_private(tmp_path: Path) -> None:
    state = tmp_path / "s"
    first = prepare_state_dir(state)
    again = prepare_state_dir(state)
    assert first.ear_public_pem() == again.ear_public_pem()
    assert first.log_vkey() == again.log_vkey()
    assert first.master_key == again.master_key
    assert state.stat().st_mode & 0o777 == 0o700
    for name in ("master.key", "ear-signing.pem", "log-note.key", "broker.db", "log.db"):
        assert (state / name).stat().st_mode & 0o777 == 0o600, name
    jwk = json.loads((state / "ear-verifier.jwk").read_text())
    loaded = public_key_from_jwk(jwk)
    assert isinstance(loaded, ec.EllipticCurvePublicKey)
    assert loaded.public_numbers() == first.result_key.public_key().public_numbers()
    assert load_verifier((state / "log.vkey").read_text().strip()).name == first.log_name
    assert "seed" not in repr(first) and first.master_key.hex() not in repr(first)


def test_loose_or_missing_state_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a broker state directory"):
        prepare_state_dir(tmp_path / "nothing", create=False)
    state = tmp_path / "s"
    prepare_state_dir(state)
    (state / "ear-signing.pem").chmod(0o640)
    with pytest.raises(InputError, match="group/others"):
        prepare_state_dir(state)
    (state / "ear-signing.pem").chmod(0o600)
    state.chmod(0o777)
    with pytest.raises(InputError, match="writable by group/others"):
        prepare_state_dir(state)
    state.chmod(0o700)
    (state / "log-note.key").write_text("PRIVATE+KEY+x+00000000+AQ==\n")
    with pytest.raises(InputError, match="log note key"):
        prepare_state_dir(state)


@pytest.mark.parametrize("name", ["broker.db", "log.db", "broker.db-wal", "log.db-shm"])
def test_loose_databases_are_refused(tmp_path: Path, name: str) -> None:
    """Whoever can write broker.db can swap a model's policy (its rows are protected by the
    file's mode alone): a database, or its WAL/shared-memory file, that group or others may
    read or write, or that is a symlink, stops the broker as a loose key file does."""
    state = tmp_path / "s"
    prepare_state_dir(state)
    path = state / name
    path.touch()
    for mode in (0o640, 0o604, 0o660):
        path.chmod(mode)
        with pytest.raises(InputError, match="broker database is accessible by group/others"):
            prepare_state_dir(state)
    path.chmod(0o600)
    prepare_state_dir(state)
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InputError, match="not a regular file"):
        prepare_state_dir(state)


def test_config_rules() -> None:
    with pytest.raises(InputError):
        BrokerConfig(state_dir=Path("s"), tls_cert=Path("c"))
    with pytest.raises(InputError):
        BrokerConfig(state_dir=Path("s"), admin_listen="127.0.0.1:1")


def test_client_ca_without_admin_port_is_refused() -> None:
    """Client certificates are checked on the admin port only: a --client-ca without
    --admin-listen would be silently unused, and an operator would believe the enclave-facing
    port required client certificates."""
    with pytest.raises(InputError, match="--admin-listen"):
        BrokerConfig(
            state_dir=Path("s"),
            listen="0.0.0.0:7443",
            tls_cert=Path("c"),
            tls_key=Path("k"),
            client_ca=Path("ca"),
        )


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.from_regex(r"[a-z0-9./-]{1,40}", fullmatch=True))
def test_note_key_round_trip(seed: bytes, name: str) -> None:
    signer = NoteSigner(name=name, seed=seed)
    back = parse_note_private_key(encode_note_private_key(signer) + "\n")
    assert back.public_key == signer.public_key and back.name == name


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_note_key_parser_raises_only_input_errors(text: str) -> None:
    try:
        parse_note_private_key(text)
    except InputError:
        pass


def test_cli_keys_text_names_flags_that_exist(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every ``lessee <command> --<flag>`` the key listing tells its reader to use is a flag of
    that command (it once said ``result verify --key``, which is refused)."""
    assert main(["broker", "keys", "--state", str(harness.state)]) == 0
    text = capsys.readouterr().out
    uses = re.findall(r"lessee ((?:[a-z]+ )+)(--[a-z-]+)", text)
    assert {(cmd.strip(), flag) for cmd, flag in uses} == {
        ("result verify", "--verifier-key"),
        ("agent", "--broker-key"),
        ("audit verify", "--log-key"),
    }
    for cmd, flag in uses:
        assert main([*cmd.split(), "--help"]) == 0
        assert flag in capsys.readouterr().out, (cmd, flag)


def test_cli_keys_export_and_agent(
    harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["broker", "keys", "--state", str(harness.state), "--json"]) == 0
    keys = json.loads(capsys.readouterr().out)
    assert keys["log_vkey"] == harness.keys.log_vkey()
    # lessee agent --emulate against the running broker: attests, releases, loads the model.
    from agent.agent import EMULATED_LAUNCH_MEASUREMENT  # noqa: F401 (the policy pins it)
    from agent.demo import make_model
    from agent.loader import seal_model
    from agent.loader.keyfile import write_key_file

    make_model(tmp_path / "model")
    dek = bytearray(os.urandom(32))
    sealed = seal_model(
        tmp_path / "model", tmp_path / "sealed", dek, model_id="m3", model_version=2, rng=os.urandom
    )
    key_file = tmp_path / "m3.key"
    write_key_file(
        key_file,
        dek,
        key_id="k",
        model_id="m3",
        model_version=2,
        manifest_digest=sealed.manifest_digest,
    )
    policy = tmp_path / "policy.json"
    from agent.demo import demo_policy

    policy.write_text(
        json.dumps(
            demo_policy(list(harness.pki.root_fingerprints().values()), sealed.manifest_digest)
        )
    )
    assert harness.server is not None
    target = harness.server.target
    assert (
        main(
            [
                "broker",
                "register",
                "--target",
                target,
                "--key-file",
                str(key_file),
                "--policy",
                str(policy),
            ]
        )
        == 0
    )
    assert "registered m3 v2" in capsys.readouterr().out
    # A mismatching model id is refused locally, before anything is sent.
    assert main(["broker", "register", "--target", target, "--key-file", str(key_file),
                 "--policy", str(policy), "--model-id", "other"]) == 2  # fmt: skip
    pem = tmp_path / "ear.pem"
    pem.write_text(keys["ear_verifier_pem"])
    code = main(
        ["agent", "--broker", target, "--model-id", "m3", "--sealed", str(tmp_path / "sealed"),
         "--emulate", "--emulation-dir", str(harness.pki_dir), "--broker-key", str(pem),
         "--log-key", str(harness.state / "log.vkey"), "--json"]
    )  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["status"] == "affirming" and out["tensors"] == 5 and out["result_verified"]
    # Wrong measurement: refused, exit 1, findings on stderr.
    code = main(
        ["agent", "--broker", target, "--model-id", "m3", "--sealed", str(tmp_path / "sealed"),
         "--emulate", "--emulation-dir", str(harness.pki_dir), "--measurement", "00" * 48]
    )  # fmt: skip
    assert code == 1
    assert "measurement" in capsys.readouterr().err
    # Export while the broker runs: a consistent snapshot that audit verify accepts.
    bundle = tmp_path / "log.bundle"
    assert main(["broker", "export-log", "--state", str(harness.state), "--out", str(bundle)]) == 0
    assert main(["audit", "verify", str(bundle), "--log-key", str(harness.state / "log.vkey")]) == 0


def test_broker_register_bad_inputs_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review: a policy file that is not UTF-8 was "internal error (UnicodeDecodeError)"; a
    directory given as --key-file was called "accessible by group or others"; a bad --target
    was called a "listen address". Each is now exit 2 with one line saying what is wrong,
    before anything is sent (no broker listens here)."""
    from agent.demo import demo_policy
    from agent.loader.keyfile import write_key_file

    key_file = tmp_path / "m.key"
    write_key_file(key_file, bytearray(32), key_id="k", model_id="m", model_version=1,
                   manifest_digest="sha256:" + "ab" * 32)  # fmt: skip
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(demo_policy(["cd" * 32], "ab" * 32)))
    bad_utf8 = tmp_path / "utf16.json"
    bad_utf8.write_bytes('{"name": "x"}'.encode("utf-16"))
    big = tmp_path / "big.json"
    from attest.policy import MAX_POLICY_BYTES

    big.write_bytes(b" " * (MAX_POLICY_BYTES + 1))

    def register(target: str, key: Path, pol: Path) -> str:
        argv = ["broker", "register", "--target", target, "--key-file", str(key)]
        assert main([*argv, "--policy", str(pol)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lessee: error: ") and err.count("\n") == 1, err
        return err

    assert register("127.0.0.1:1", key_file, bad_utf8) == (
        f"lessee: error: {bad_utf8}: the policy is not UTF-8 text\n"
    )
    assert "larger than" in register("127.0.0.1:1", key_file, big)
    err = register("127.0.0.1:1", tmp_path, policy)
    assert f"{tmp_path}: not a regular file" in err and "group or others" not in err
    err = register("nohost", key_file, policy)
    assert err == "lessee: error: target 'nohost' is not host:port\n"


def test_agent_without_hardware_says_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "sealed").mkdir()
    code = main(
        [
            "agent",
            "--broker",
            "127.0.0.1:1",
            "--model-id",
            MODEL,
            "--sealed",
            str(tmp_path / "sealed"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "configfs" in err or "tsm" in err or "NVML" in err


def test_broker_serve_subprocess_stops_gracefully(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli.main", "broker", "serve", "--state", str(tmp_path / "s"),
         "--listen", "127.0.0.1:0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line and "plaintext, loopback only" in line
        proc.terminate()
        assert proc.wait(timeout=20) == 0
        assert proc.stderr is not None
        logs = [json.loads(x) for x in proc.stderr.read().splitlines() if x.startswith("{")]
        assert {"broker_started", "broker_stopped"} <= {e["event"] for e in logs}
        text = json.dumps(logs)
        assert (tmp_path / "s" / "master.key").read_bytes().hex() not in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    start = time.monotonic()
    assert main(["broker", "serve", "--state", str(tmp_path / "t"), "--listen", "0.0.0.0:0"]) == 2
    assert time.monotonic() - start < 10


def test_demo_runs_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], snp_emulation_ok: None
) -> None:
    start = time.monotonic()
    code = main(["demo", "--workdir", str(tmp_path / "demo")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert time.monotonic() - start < 60
    for text in (
        "attestation result: affirming",
        "equal to the originals",
        "zero trust in the broker: a second client appraised the enclave's own evidence",
        "both clients verified the bundle's log proof",
        "second refused before any response (ALREADY_EXISTS)",
        "tampered evidence",
        "replayed nonce: FAILED_PRECONDITION [nonce_used]",
        "evidence made for another nonce: contraindicated",
        "debug-mode CPU",
        "GPU not in CC mode",
        "lessee audit verify exit code 0",
    ):
        assert text in out, text
    assert (tmp_path / "demo" / "audit-log.bundle").is_file()
    assert (tmp_path / "demo" / "keys" / "model.key").stat().st_mode & 0o777 == 0o600


def test_demo_refuses_a_foreign_non_empty_workdir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review: ``--workdir`` over a directory of the user's silently overwrote or deleted
    policy.json, model/config.json, keys/model.key, audit-log.bundle... Now a non-empty
    directory without the demo's marker is exit 2 before anything is written."""
    from agent.demo import WORKDIR_MARKER

    workdir = tmp_path / "mine"
    (workdir / "model").mkdir(parents=True)
    (workdir / "keys").mkdir()
    mine = {
        "policy.json": b'{"mine": true}',
        "model/config.json": b"{}",
        "keys/model.key": b"my key",
        "audit-log.bundle": b"my log",
    }
    for name, data in mine.items():
        (workdir / name).write_bytes(data)
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    assert main(["demo", "--workdir", str(workdir)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"lessee: error: --workdir {workdir}: not empty")
    assert captured.err.count("\n") == 1 and "new or empty directory" in captured.err
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before
    for name, data in mine.items():
        assert (workdir / name).read_bytes() == data
    assert not (workdir / WORKDIR_MARKER).exists()
    a_file = tmp_path / "file"
    a_file.write_bytes(b"x")
    assert main(["demo", "--workdir", str(a_file)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_demo_workdir_claim(tmp_path: Path) -> None:
    """New and empty directories are claimed (marked); a marked one is taken again."""
    from agent.demo import WORKDIR_MARKER, claim_workdir

    new = tmp_path / "a" / "b"
    claim_workdir(new)
    assert (new / WORKDIR_MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    claim_workdir(empty)
    (empty / "policy.json").write_text("{}")  # what a run leaves
    claim_workdir(empty)  # marked: an earlier run's, taken again
    (empty / WORKDIR_MARKER).unlink()
    with pytest.raises(InputError, match="not made by lessee demo"):
        claim_workdir(empty)


def test_demo_runs_again_in_the_same_workdir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], snp_emulation_ok: None
) -> None:
    """``--workdir`` keeps what the demo made; running it again there (to inspect a fresh run)
    must work too, reusing the PKI and broker state and replacing the demo's own outputs."""
    workdir = tmp_path / "demo"
    assert main(["demo", "--workdir", str(workdir)]) == 0, capsys.readouterr().out
    capsys.readouterr()
    code = main(["demo", "--workdir", str(workdir)])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert f"sealed model: {workdir / 'sealed-model'}" in captured.out
    assert f"exported log (audit bundle): {workdir / 'audit-log.bundle'}" in captured.out
    assert (workdir / ".lessee-demo").is_file()


def test_demo_reused_workdir_writes_through_no_planted_symlink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], snp_emulation_ok: None
) -> None:
    """Review M2: in a reused workdir, symlinks planted at the demo's fixed names (dangling or
    to a file outside) were written through. Now each name is unlinked and the output made
    anew: the files outside are untouched and the demo still succeeds."""
    from agent.demo import WORKDIR_MARKER

    workdir, outside = tmp_path / "demo", tmp_path / "outside"
    workdir.mkdir(mode=0o700)
    outside.mkdir()
    (workdir / WORKDIR_MARKER).write_text("made by lessee demo\n")
    (workdir / "model").mkdir(mode=0o700)
    victim = outside / "victim.txt"
    victim.write_bytes(b"precious")
    (workdir / "policy.json").symlink_to(victim)
    (workdir / "model" / "config.json").symlink_to(victim)
    (workdir / "audit-log.bundle").symlink_to(outside / "dangling.bundle")
    (workdir / "keys").symlink_to(outside)
    (workdir / "sealed-model").symlink_to(outside / "no-such-dir")
    code = main(["demo", "--workdir", str(workdir)])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert victim.read_bytes() == b"precious"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    for name in ("policy.json", "model/config.json", "audit-log.bundle", "keys", "sealed-model"):
        assert not (workdir / name).is_symlink(), name
    assert json.loads((workdir / "policy.json").read_text())["cpu_tees"] == ["snp"]
    assert (workdir / "keys" / "model.key").stat().st_mode & 0o777 == 0o600
    assert not list(workdir.glob(".audit-log-*"))


@pytest.mark.parametrize("where", ["", "broker-state", "model"])
def test_demo_refuses_a_group_or_other_writable_workdir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """A workdir (or, reused, a subdirectory the demo writes into) that group or others can
    write is exit 2, one line, before anything is written."""
    from agent.demo import WORKDIR_MARKER

    workdir = tmp_path / "demo"
    workdir.mkdir(mode=0o700)
    if where:
        (workdir / WORKDIR_MARKER).write_text("made by lessee demo\n")
        (workdir / where).mkdir()
    target = workdir / where if where else workdir
    os.chmod(target, 0o777)
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    assert main(["demo", "--workdir", str(workdir)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"lessee: error: --workdir {target}: writable by group")
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before


def test_demo_refuses_a_symlink_in_place_of_a_reused_subdirectory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.demo import WORKDIR_MARKER

    workdir, outside = tmp_path / "demo", tmp_path / "outside"
    workdir.mkdir(mode=0o700)
    outside.mkdir()
    (workdir / WORKDIR_MARKER).write_text("made by lessee demo\n")
    (workdir / "broker-state").symlink_to(outside)
    assert main(["demo", "--workdir", str(workdir)]) == 2
    assert "broker-state: not a directory" in capsys.readouterr().err
    assert not any(outside.iterdir())


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_demo_stopped_by_sigterm_or_sighup_removes_its_temporary_directory(
    tmp_path: Path, signame: str
) -> None:
    """Only Ctrl-C ran the demo's cleanup: SIGTERM (``timeout``, a service stop) and SIGHUP (a
    closed terminal) left its temporary directory in /tmp, data key, broker master key and
    emulation private keys included. They now stop it as Ctrl-C does (exit 130)."""
    import os
    import signal
    import subprocess
    import sys

    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "agent.cli.main", "demo"],
        cwd=Path(__file__).resolve().parents[2], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if b"] 6." in line or b"] 7." in line:
                proc.send_signal(getattr(signal, signame))
                break
        proc.communicate(timeout=60)
        assert proc.returncode == 130
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith("lessee-demo-")] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_an_interrupted_command_inside_the_demo_interrupts_the_demo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The demo runs ``lessee audit`` in-process, which answers Ctrl-C with exit 130: the demo
    took that as a failed step and ran on (replay, listing), then said FAILED (exit 1)."""
    import agent.cli.main as cli_main
    from agent.demo import _command

    monkeypatch.setattr(cli_main, "main", lambda argv: cli_main.EXIT_INTERRUPTED)
    with pytest.raises(KeyboardInterrupt):
        _command(["audit", "verify", "x"])
    monkeypatch.setattr(cli_main, "main", lambda argv: 1)
    assert _command(["audit", "verify", "x"]) == 1
