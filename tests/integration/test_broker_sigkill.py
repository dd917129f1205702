"""A broker killed at any moment (SIGKILL, mid-flow, under concurrent load) loses no acknowledged
state and never accepts a nonce twice.

The real ``lessee broker serve`` runs as a subprocess on real SQLite; agents on emulated hardware
run Challenge -> Attest -> ReleaseKey flows from several threads while the broker is killed at a
random moment, three times over, restarting on the same state directory each time. Everything a
client was *answered* must then hold: each answered Attest's nonce is refused if sent again, each
answered release's result is refused if used again, each answered result is in the signed log at
the index it was given, and the exported log verifies.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from agent.agent import (
    EMULATED_LAUNCH_MEASUREMENT,
    Attested,
    BrokerRefusedError,
    EnclaveAgent,
    Session,
    call_broker,
    open_channel,
)
from agent.broker.config import BrokerKeys, prepare_state_dir
from agent.cli.main import main
from agent.demo import demo_policy
from agent.emulation import (
    EmulatedCpuSource,
    EmulatedGpu,
    EmulatedGpuSource,
    EmulatedSnp,
    EmulationPki,
)
from agent.rpc.v1 import broker_pb2, broker_pb2_grpc
from attest.bundle import EvidenceBundle
from attest.errors import LesseeError
from attest.log.entry import decode_entry

REPO = Path(__file__).resolve().parents[2]
MODEL = "killed"
CYCLES = 3
THREADS = 4


def _start(state: Path, pki_dir: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli.main", "broker", "serve", "--state", str(state),
         "--listen", "127.0.0.1:0", "--trust-emulation", str(pki_dir), "--workers", "8"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on " in line, line
    return proc, line.split("listening on ", 1)[1].split()[0]


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _register(channel: grpc.Channel, pki: EmulationPki) -> None:
    admin = broker_pb2_grpc.BrokerAdminStub(channel)  # type: ignore[no-untyped-call]
    call_broker("RegisterModel", admin.RegisterModel, broker_pb2.RegisterModelRequest(
        model_id=MODEL, model_version=1, data_key=bytes(32),
        policy_json=json.dumps(demo_policy(list(pki.root_fingerprints().values()), "00" * 32)),
        manifest_digest=bytes(32),
    ), 30.0)  # fmt: skip


def _agent(channel: grpc.Channel, pki: EmulationPki, keys: BrokerKeys) -> EnclaveAgent:
    """An agent on emulated hardware that pins the broker's result and log keys."""
    return EnclaveAgent(
        channel,
        cpu=EmulatedCpuSource(EmulatedSnp(pki, measurement=EMULATED_LAUNCH_MEASUREMENT)),
        gpu=EmulatedGpuSource([EmulatedGpu(pki, index=0)]),
        broker_key=keys.result_key.public_key(),
        log_key=keys.log_signer.verifier(),
    )


@dataclass
class Answered:
    """What clients were told before the kill (only answers count: a call cut off by the kill
    may or may not have committed, and either is allowed)."""

    attested: list[tuple[Session, EvidenceBundle, Attested]] = field(default_factory=list)
    released: list[Attested] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _flows(
    target: str, pki: EmulationPki, keys: object, stop: threading.Event, out: Answered
) -> None:
    with open_channel(target) as channel:
        agent = EnclaveAgent(
            channel,
            cpu=EmulatedCpuSource(EmulatedSnp(pki, measurement=EMULATED_LAUNCH_MEASUREMENT)),
            gpu=EmulatedGpuSource([EmulatedGpu(pki, index=0)]),
            broker_key=keys.result_key.public_key(),  # type: ignore[attr-defined]
            log_key=keys.log_signer.verifier(),  # type: ignore[attr-defined]
            timeout=10,
        )
        while not stop.is_set():
            try:
                session = agent.start_session(MODEL)
                bundle = agent.collect(session)
                attested = agent.check_result(session, agent.send_evidence(session, bundle))
                with out.lock:
                    out.attested.append((session, bundle, attested))
                agent.release(attested)
                with out.lock:
                    out.released.append(attested)
            except (grpc.RpcError, LesseeError, OSError):
                # The kill cuts calls off in every possible way; only answers are recorded.
                if stop.is_set():
                    return
                time.sleep(0.01)


def test_sigkill_at_random_moments_loses_nothing_acknowledged(
    tmp_path: Path, pki_dir: Path, pki: EmulationPki, snp_emulation_ok: None
) -> None:
    state = tmp_path / "state"
    rng = random.Random(20261207)
    proc, target = _start(state, pki_dir)
    keys = prepare_state_dir(state, create=False)
    with open_channel(target) as ch:
        _register(ch, pki)
    answered = Answered()
    try:
        for _ in range(CYCLES):
            stop = threading.Event()
            threads = [
                threading.Thread(target=_flows, args=(target, pki, keys, stop, answered))
                for _ in range(THREADS)
            ]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.4, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            stop.set()
            for t in threads:
                t.join(timeout=60)
            proc, target = _start(state, pki_dir)
        assert len(answered.attested) >= CYCLES and answered.released, "no flow completed"

        with open_channel(target) as channel:
            agent = EnclaveAgent(
                channel,
                cpu=EmulatedCpuSource(EmulatedSnp(pki, measurement=EMULATED_LAUNCH_MEASUREMENT)),
                gpu=EmulatedGpuSource([EmulatedGpu(pki, index=0)]),
            )
            for session, bundle, _ in answered.attested:
                with pytest.raises(BrokerRefusedError) as nonce:
                    agent.send_evidence(session, bundle)
                assert nonce.value.reason == "nonce_used"
            for attested in answered.released:
                with pytest.raises(BrokerRefusedError) as used:
                    agent.release(attested)
                assert used.value.reason == "result_used"

        out = tmp_path / "log.bundle"
        assert main(["broker", "export-log", "--state", str(state), "--out", str(out)]) == 0
        assert main(["audit", "verify", str(out), "--log-key", str(state / "log.vkey")]) == 0
        from agent.audit.bundle import Bundle

        with Bundle(out) as log:
            entries = {r.index: decode_entry(r.data) for r in log.records}
        for _, _, attested in answered.attested:
            entry = entries[attested.log_index]
            assert entry.result == attested.result and entry.nonce == attested.session.nonce
    finally:
        _stop(proc)


def test_killed_between_release_claim_and_log_append_the_retry_is_released_and_logged(
    tmp_path: Path, pki_dir: Path, pki: EmulationPki, snp_emulation_ok: None
) -> None:
    """The window a random kill rarely hits, made wide: log.db's write lock is held from
    another connection (a real SQLite lock), so the broker's ReleaseKey has claimed the result
    in broker.db and waits to append its entry when it is killed. No key was sent. The
    enclave's retry on the restarted broker must be released and logged (it was refused
    ``result_used`` with no release in the log, which the audit replay rejects), and the
    whole log must verify and replay clean. A second broker on the same state is refused."""
    state = tmp_path / "state"
    proc, target = _start(state, pki_dir)
    keys = prepare_state_dir(state, create=False)
    try:
        with open_channel(target) as ch:
            _register(ch, pki)
            # One broker per state directory: a second one is refused while this one runs.
            assert main(["broker", "serve", "--state", str(state), "--listen", "127.0.0.1:0"]) == 2
            agent = _agent(ch, pki, keys)
            attested = agent.attest(MODEL)
            blocker = sqlite3.connect(state / "log.db", isolation_level=None, timeout=30)
            blocker.execute("BEGIN IMMEDIATE")
            pending = broker_pb2_grpc.KeyBrokerStub(ch).ReleaseKey.future(  # type: ignore[no-untyped-call]
                broker_pb2.ReleaseKeyRequest(result=attested.result, model_id=MODEL), timeout=60
            )
            broker_db = sqlite3.connect(state / "broker.db")
            deadline = time.monotonic() + 30
            while not broker_db.execute("SELECT count(*) FROM releases").fetchone()[0]:
                assert time.monotonic() < deadline, "the release was never claimed"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            blocker.execute("ROLLBACK")
            blocker.close()
            with pytest.raises(grpc.RpcError):
                pending.result()
            assert broker_db.execute("SELECT count(*) FROM releases").fetchone()[0] == 1
            broker_db.close()
        proc, target = _start(state, pki_dir)
        with open_channel(target) as ch:
            agent = _agent(ch, pki, keys)
            key, _ = agent.release(attested)
            assert bytes(key) == bytes(32)
            with pytest.raises(BrokerRefusedError) as used:  # and only once
                agent.release(attested)
            assert used.value.reason == "result_used"
        _stop(proc)
        out = tmp_path / "log.bundle"
        assert main(["broker", "export-log", "--state", str(state), "--out", str(out)]) == 0
        from agent.audit.bundle import Bundle

        with Bundle(out) as log:
            kinds = [decode_entry(r.data).kind.value for r in log.records]
        assert kinds == ["attest", "release", "release_refused"]
        roots = [str(pki_dir / p) for p in ("gpu/root.pem", "rim/root.pem", "snp/ark.pem")]
        assert main(["audit", "replay", str(out), "--log-key", str(state / "log.vkey"),
                     "--verifier-key", str(state / "ear-verifier.pem"), "--quiet",
                     "--trust-root-candidates", *roots]) == 0  # fmt: skip
    finally:
        _stop(proc)
