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
from agent.broker.config import prepare_state_dir
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
        admin = broker_pb2_grpc.BrokerAdminStub(ch)  # type: ignore[no-untyped-call]
        call_broker("RegisterModel", admin.RegisterModel, broker_pb2.RegisterModelRequest(
            model_id=MODEL, model_version=1, data_key=bytes(32),
            policy_json=json.dumps(demo_policy(list(pki.root_fingerprints().values()), "00" * 32)),
            manifest_digest=bytes(32),
        ), 30.0)  # fmt: skip
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
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
