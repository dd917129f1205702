"""Binding version 2 at the broker and in the audit replay (threat T-STREAM-03), with emulated
hardware whose reports are made for the broker's own session (real signatures, real SQLite, the
real composite appraiser): a relay that flips the GPUs' CC or DevTools flag makes the CPU report
miss the binding; version-1 sessions (a broker run with ``--binding-v1``, or entries logged
before version 2) still verify and replay; a broker that logs flipped flags as affirming is
caught by the replay."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from agent.audit.replay import ReplayReport, replay_bundle_file
from agent.broker.service import Appraisal, Appraiser, ReleaseRefusedError
from attest.binding import (
    BINDING_CLAIM,
    PROTOCOL_LABEL_V1,
    PROTOCOL_LABEL_V2,
    DeviceState,
    SessionBinding,
    derive_session_binding,
)
from attest.bundle import EvidenceBundle
from attest.ear import Status, verify_ear
from attest.policy import Policy
from tests.audit.helpers import MODEL, VERIFIER_KEY, Built, build_emulated, enclave_key
from tests.log.helpers import LOG_SIGNER

emulation = pytest.importorskip("agent.emulation")

MEASUREMENT = hashlib.sha384(b"lessee binding v2 test VM image").digest()


@dataclass
class Setup:
    built: Built
    pki: object
    appraiser: Appraiser


def _setup(d: Path) -> Setup:
    b, pki = build_emulated(d, name="binding-v2", measurement=MEASUREMENT)
    return Setup(b, pki, b.broker.appraiser)


def _session(
    s: Setup, *, cc: bool = True, devtools: bool = False, shown: tuple[bool, bool] | None = None
) -> tuple[bytes, bytes, EvidenceBundle, SessionBinding]:
    """A Challenge and the agent's evidence for it (state read first, under the challenge's
    label), with the flags then rewritten to ``shown`` by the relay if given."""
    s.built.clock.tick()
    ch = s.built.broker.challenge(MODEL)
    key = enclave_key()
    gpus = emulation.EmulatedGpuSource(
        [emulation.EmulatedGpu(s.pki, cc_mode_on=cc, devtools_on=devtools)], clock=s.built.clock
    )
    st = gpus.cc_state()
    state = DeviceState(st.cc_mode_on, st.devtools_on, gpus.gpu_count(), 0)
    binding = derive_session_binding(ch.nonce, key, ch.protocol_label, state)
    cpu = emulation.EmulatedCpuSource(emulation.EmulatedSnp(s.pki, measurement=MEASUREMENT))
    flags = shown if shown is not None else (state.cc_mode_on, state.devtools_on)
    bundle = EvidenceBundle(
        cpu=cpu.collect(binding.report_data),
        gpus=gpus.collect(binding.gpu_nonce),
        cc_mode_on=flags[0],
        devtools_on=flags[1],
    )
    return ch.nonce, key, bundle, binding


def _attest(
    s: Setup, nonce: bytes, key: bytes, bundle: EvidenceBundle
) -> tuple[str, Status, set[str]]:
    out = s.built.broker.attest(nonce=nonce, enclave_public_key=key, model_id=MODEL, bundle=bundle)
    rejects = {f"{f.device}:{f.field}" for f in out.findings if f.severity.value == "reject"}
    return out.result, out.status, rejects


def _replay(b: Built) -> ReplayReport:
    b.export()
    return replay_bundle_file(b.dir / "log.zip", LOG_SIGNER.verifier(), VERIFIER_KEY.public_key())


@dataclass
class Logged:
    built: Built
    statuses: list[Status]
    rejects: list[set[str]]
    tokens: list[str]


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    """One log across an upgrade: a version-1 broker's honest session (released), then the
    version-2 default: an honest session (released), CC off shown as on, DevTools on shown as
    off (each refused a release, which logs the refusal)."""
    s = _setup(tmp_path_factory.mktemp("binding-v2"))
    b = s.built
    statuses, rejects, tokens = [], [], []
    b.broker.protocol_label = PROTOCOL_LABEL_V1  # --binding-v1, or a broker before version 2
    for label, kw in (
        (PROTOCOL_LABEL_V1, {}),
        (PROTOCOL_LABEL_V2, {}),
        (PROTOCOL_LABEL_V2, {"cc": False, "shown": (True, False)}),
        (PROTOCOL_LABEL_V2, {"devtools": True, "shown": (True, False)}),
    ):
        b.broker.protocol_label = label
        nonce, key, bundle, _ = _session(s, **kw)  # type: ignore[arg-type]
        token, status, rej = _attest(s, nonce, key, bundle)
        statuses.append(status)
        rejects.append(rej)
        tokens.append(token)
        b.clock.tick()
        if status is Status.AFFIRMING:
            b.broker.release_key(result=token, model_id=MODEL)
        else:
            with pytest.raises(ReleaseRefusedError):
                b.broker.release_key(result=token, model_id=MODEL)
    yield Logged(b, statuses, rejects, tokens)
    b.close()


def test_honest_sessions_of_both_versions_affirm(logged: Logged) -> None:
    assert logged.statuses[:2] == [Status.AFFIRMING, Status.AFFIRMING]
    claims = [
        verify_ear(t, VERIFIER_KEY.public_key(), at=logged.built.clock.now) for t in logged.tokens
    ]
    assert BINDING_CLAIM not in claims[0].extra  # version 1: no claim, the EAR as before
    assert claims[1].extra[BINDING_CLAIM] == {
        "label": PROTOCOL_LABEL_V2,
        "cc_mode_on": True,
        "devtools_on": False,
        "gpus": 1,
        "switches": 0,
    }


@pytest.mark.parametrize("index", [2, 3])
def test_flipped_flags_fail_the_binding(logged: Logged, index: int) -> None:
    assert logged.statuses[index] is Status.CONTRAINDICATED
    assert "cpu0:snp.report_data" in logged.rejects[index]
    # The flags shown (CC on, DevTools off) are what the policy wants: only the binding fails.
    assert not any("cc_mode" in r or "devtools" in r for r in logged.rejects[index])


def test_the_replay_reproduces_every_verdict_of_a_mixed_log(logged: Logged) -> None:
    report = _replay(logged.built)
    assert report.ok, [f.line() for f in report.all_findings]
    kinds = [e.kind.value for e in report.entries]
    assert kinds.count("attest") == 4 and kinds.count("release") == 2
    assert kinds.count("release_refused") == 2
    attests = [e for e in report.entries if e.kind.value == "attest"]
    assert [e.logged_status for e in attests] == logged.statuses
    assert all(e.verdict_equal for e in attests)


def _lying(real: Appraiser, honest: list[SessionBinding]) -> Appraiser:
    """A broker colluding with the host: it appraises the reports against the binding they
    carry (the honest flags') while logging the relay's flipped flags."""

    def appraise(
        bundle: EvidenceBundle, binding: SessionBinding, p: Policy, at: datetime
    ) -> Appraisal:
        return real(bundle, honest[0], p, at)

    return appraise


def test_a_broker_that_logs_flipped_flags_as_affirming_is_caught(tmp_path: Path) -> None:
    s = _setup(tmp_path)
    b = s.built
    try:
        nonce, key, bundle, honest = _session(s, cc=False, shown=(True, False))
        b.broker.appraiser = _lying(s.appraiser, [honest])
        _, status, _ = _attest(s, nonce, key, bundle)
        assert status is Status.AFFIRMING  # what it logs and signs
        report = _replay(b)
    finally:
        b.close()
    codes = {f.code for f in report.all_findings}
    assert not report.ok and "verdict_mismatch" in codes


@pytest.mark.parametrize(
    ("binding_v1", "label"), [(False, PROTOCOL_LABEL_V2), (True, PROTOCOL_LABEL_V1)]
)
def test_challenges_are_v2_unless_the_broker_is_told_v1(
    tmp_path: Path, binding_v1: bool, label: str
) -> None:
    """Version 2 by default; version 1 only with the explicit setting (``--binding-v1``)."""
    from agent.broker.config import BrokerConfig
    from agent.cli.main import build_parser
    from agent.rpc.server import build_broker

    args = build_parser("broker").parse_args(
        [
            "broker",
            "serve",
            "--state",
            str(tmp_path / "x"),
            *(["--binding-v1"] if binding_v1 else []),
        ]
    )
    assert args.binding_v1 is binding_v1
    broker, res, _ = build_broker(BrokerConfig(state_dir=tmp_path / "state", binding_v1=binding_v1))
    try:
        broker.register_model(
            model_id=MODEL, model_version=1, data_key=bytes(32),
            policy_json=json.dumps({"name": "a", "cpu_tees": ["snp"], "snp": {"allowed_measurements": ["00" * 48]}}),
            manifest_digest=bytes(32),
        )  # fmt: skip
        assert broker.challenge(MODEL).protocol_label == label
    finally:
        res.log.close()
        res.store.close()


def test_evidence_of_a_dropped_gpu_fails_the_binding(tmp_path: Path) -> None:
    """The agent collected two GPUs; a relay forwards only the one whose evidence passes (say,
    the other runs firmware the policy refuses). Each remaining report still carries the
    session's binding, but the binding was derived over two GPUs, so the CPU report and the
    GPU report both miss the one the broker derives from a one-GPU bundle."""
    s = _setup(tmp_path)
    s.built.clock.tick()
    ch = s.built.broker.challenge(MODEL)
    assert ch.protocol_label == PROTOCOL_LABEL_V2
    key = enclave_key()
    gpus = emulation.EmulatedGpuSource(
        [emulation.EmulatedGpu(s.pki, index=i) for i in range(2)], clock=s.built.clock
    )
    st = gpus.cc_state()
    state = DeviceState(st.cc_mode_on, st.devtools_on, gpus.gpu_count(), 0)
    binding = derive_session_binding(ch.nonce, key, ch.protocol_label, state)
    cpu = emulation.EmulatedCpuSource(emulation.EmulatedSnp(s.pki, measurement=MEASUREMENT))
    reports = gpus.collect(binding.gpu_nonce)
    assert len(reports) == 2
    kept = EvidenceBundle(
        cpu=cpu.collect(binding.report_data),
        gpus=reports[:1],
        cc_mode_on=st.cc_mode_on,
        devtools_on=st.devtools_on,
    )
    _, status, rejects = _attest(s, ch.nonce, key, kept)
    assert status is not Status.AFFIRMING
    assert "cpu0:snp.report_data" in rejects

    # The whole bundle, as the agent made it, affirms: the refusal above is the drop's doing.
    s.built.clock.tick()
    ch = s.built.broker.challenge(MODEL)
    state = DeviceState(st.cc_mode_on, st.devtools_on, 2, 0)
    binding = derive_session_binding(ch.nonce, key, ch.protocol_label, state)
    whole = EvidenceBundle(
        cpu=cpu.collect(binding.report_data),
        gpus=gpus.collect(binding.gpu_nonce),
        cc_mode_on=st.cc_mode_on,
        devtools_on=st.devtools_on,
    )
    _, status, rejects = _attest(s, ch.nonce, key, whole)
    assert (status, rejects) == (Status.AFFIRMING, set())
