"""Zero trust in the broker: the client appraises the enclave's own evidence (a version-2 key
bundle) with ``attest/`` under its own policy, over real gRPC through the test relay.

The evidence is emulated SEV-SNP + Hopper evidence made for the bundle's exact key and nonce by
this installation's emulation PKI (roots generated per test session, never committed), so every
signature, chain, RIM and OCSP answer in it is real and checked. The broker's EAR in these
bundles is deliberately one the client cannot or must not trust (another broker's key, or a
contraindicated status): the zero-trust client never reads it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from agent.agent import EMULATED_LAUNCH_MEASUREMENT
from agent.cli.main import main
from agent.client import evidence_check
from agent.demo import demo_policy
from agent.emulation import (
    EmulatedCpuSource,
    EmulatedGpu,
    EmulatedGpuSource,
    EmulatedSnp,
    EmulationPki,
)
from agent.rpc.server import appraisal_context, load_emulation_roots
from attest.appraise.composite import AppraisalContext
from attest.binding import PROTOCOL_LABEL_V2, DeviceState, derive_binding, derive_session_binding
from attest.bundle import DeviceEvidenceIn, EvidenceBundle
from attest.ear import Status
from attest.errors import VerificationError
from attest.policy import Policy, load_policy
from sealing.hpke_suite import HpkePrivateKey
from sealing.stream import KeyBundle
from tests.enclave.conftest import BROKER, OTHER_BROKER, StackFactory, enclave_key, make_ear
from tests.enclave.logproof import FORGER, LOG_SIGNER, Log, entry_for, log, proof_bytes

__all__ = ["log"]  # the fixture, imported for pytest

NONCE = bytes(range(32))
OTHER_NONCE = bytes(range(1, 33))


def _policy_doc(pki: EmulationPki, *, pin_roots: bool = True) -> dict[str, object]:
    doc = demo_policy(list(pki.root_fingerprints().values()) if pin_roots else [], "00" * 32)
    del doc["model_manifest_digests"]  # a release rule; the stream client has no model
    if not pin_roots:
        del doc["roots"]
    return doc


@pytest.fixture(scope="module")
def policy(pki: EmulationPki) -> Policy:
    return load_policy(json.dumps(_policy_doc(pki)))


@pytest.fixture(scope="module")
def context(pki_dir: Path) -> AppraisalContext:
    return appraisal_context(emulation=load_emulation_roots(pki_dir))


def evidence_for(
    pki: EmulationPki,
    attested_key: bytes,
    nonce: bytes = NONCE,
    *,
    measurement: bytes = EMULATED_LAUNCH_MEASUREMENT,
    edit: Callable[[EvidenceBundle], EvidenceBundle] | None = None,
    version: int = 2,
) -> bytes:
    """Emulated evidence whose reports carry the binding of (``nonce``, ``attested_key``):
    version 2 (what a current agent makes: the GPU's state and count bound too) or 1 (an agent
    from before version 2)."""
    gpu = EmulatedGpuSource([EmulatedGpu(pki, index=0)])
    state = gpu.cc_state()
    binding = (
        derive_session_binding(
            nonce,
            attested_key,
            PROTOCOL_LABEL_V2,
            DeviceState(state.cc_mode_on, state.devtools_on, gpu.gpu_count(), 0),
        )
        if version == 2
        else derive_binding(nonce, attested_key)
    )
    cpu = EmulatedCpuSource(EmulatedSnp(pki, measurement=measurement)).collect(binding.report_data)
    bundle = EvidenceBundle(
        cpu=cpu,
        gpus=gpu.collect(binding.gpu_nonce),
        cc_mode_on=state.cc_mode_on,
        devtools_on=state.devtools_on,
    )
    return (edit(bundle) if edit is not None else bundle).to_json()


def zero_trust_bundle(
    key: HpkePrivateKey,
    evidence: bytes,
    nonce: bytes = NONCE,
    *,
    ear_status: Status = Status.AFFIRMING,
) -> KeyBundle:
    """A version-2 bundle whose EAR the zero-trust client cannot verify (another broker's key)."""
    ear = make_ear(key.public_key.encode(), broker=OTHER_BROKER, status=ear_status)
    return KeyBundle.build(key.public_key, ear.encode(), b"", evidence=evidence, nonce=nonce)


def _flip_gpu_report_byte(bundle: EvidenceBundle) -> EvidenceBundle:
    g = bundle.gpus[0]
    report = bytearray(g.report)
    report[100] ^= 0x01
    gpu = DeviceEvidenceIn(g.arch, bytes(report), g.certificate_chain_pem, g.ocsp_responses, g.rims)
    return EvidenceBundle(
        bundle.cpu, (gpu,), bundle.switches, bundle.cc_mode_on, bundle.devtools_on
    )


def test_the_client_trusts_the_evidence_not_the_broker(
    stack_factory: StackFactory, pki: EmulationPki, policy: Policy, context: AppraisalContext
) -> None:
    key = enclave_key()
    # The broker's result says CONTRAINDICATED and is signed by a key nobody pinned: a client
    # that pins the broker refuses; the zero-trust client appraises the evidence and streams.
    bundle = zero_trust_bundle(
        key, evidence_for(pki, key.public_key.encode()), ear_status=Status.CONTRAINDICATED
    )
    stack = stack_factory(key=key, bundle=bundle)
    pieces, err = stack.collect(
        "hello zero trust",
        bundle_check=evidence_check(policy, context=context, trust_relayed_cc_state=True),
    )
    assert err is None and "".join(pieces) == "hello zero trust"
    assert stack.service.stats.requests == 1

    pieces, err = stack.collect("hello", bundle_check=BROKER.public_key())
    assert pieces == [] and isinstance(err, VerificationError)
    assert stack.service.stats.requests == 1  # refused before anything was sent


def _refused(
    stack_factory: StackFactory,
    key: HpkePrivateKey,
    bundle: KeyBundle,
    policy: Policy,
    context: AppraisalContext,
) -> VerificationError:
    stack = stack_factory(key=key, bundle=bundle)
    pieces, err = stack.collect(
        "secret prompt",
        bundle_check=evidence_check(policy, context=context, trust_relayed_cc_state=True),
    )
    assert pieces == []
    assert stack.service.stats.requests == 0, "the prompt left the client"
    assert stack.relay.generate_exchanges() == []
    assert isinstance(err, VerificationError)
    return err


def test_evidence_made_for_another_key_is_refused(
    stack_factory: StackFactory, pki: EmulationPki, policy: Policy, context: AppraisalContext
) -> None:
    """A host that swaps in its own key keeps the genuine evidence, whose binding names the
    genuine key: the reports cannot carry the binding of the swapped key."""
    key, genuine = enclave_key(label="host-key"), enclave_key()
    bundle = zero_trust_bundle(key, evidence_for(pki, genuine.public_key.encode()))
    err = _refused(stack_factory, key, bundle, policy, context)
    assert err.reason == "evidence_not_affirming"
    assert "report_data" in str(err) or "nonce" in str(err)


def test_another_sessions_nonce_is_refused(
    stack_factory: StackFactory, pki: EmulationPki, policy: Policy, context: AppraisalContext
) -> None:
    key = enclave_key()
    evidence = evidence_for(pki, key.public_key.encode(), OTHER_NONCE)
    err = _refused(stack_factory, key, zero_trust_bundle(key, evidence, NONCE), policy, context)
    assert err.reason == "evidence_not_affirming"


def test_a_policy_that_pins_no_emulation_root_refuses_emulated_evidence(
    stack_factory: StackFactory, pki: EmulationPki, context: AppraisalContext
) -> None:
    """Emulation roots are only candidates: offered by ``--trust-emulation``, used only where
    the client's own policy pins them."""
    key = enclave_key()
    strict = load_policy(json.dumps(_policy_doc(pki, pin_roots=False)))
    bundle = zero_trust_bundle(key, evidence_for(pki, key.public_key.encode()))
    assert _refused(stack_factory, key, bundle, strict, context).reason == "evidence_not_affirming"


def test_a_measurement_the_policy_does_not_allow_is_refused(
    stack_factory: StackFactory, pki: EmulationPki, policy: Policy, context: AppraisalContext
) -> None:
    key = enclave_key()
    evidence = evidence_for(pki, key.public_key.encode(), measurement=bytes(48))
    err = _refused(stack_factory, key, zero_trust_bundle(key, evidence), policy, context)
    assert err.reason == "evidence_not_affirming" and "measurement" in str(err)


def test_a_tampered_gpu_report_is_refused(
    stack_factory: StackFactory, pki: EmulationPki, policy: Policy, context: AppraisalContext
) -> None:
    key = enclave_key()
    evidence = evidence_for(pki, key.public_key.encode(), edit=_flip_gpu_report_byte)
    err = _refused(stack_factory, key, zero_trust_bundle(key, evidence), policy, context)
    assert err.reason == "evidence_not_affirming" and "gpu0" in str(err)


def test_evidence_past_its_stapled_revocation_data_is_refused(
    pki: EmulationPki, policy: Policy, context: AppraisalContext
) -> None:
    """Evidence does not expire, but the OCSP answers stapled in it do: appraised as of two days
    later, the same bundle fails, so an enclave must re-attest to keep serving zero-trust
    clients (the freshness bound docs/streams.md states)."""
    key = enclave_key()
    bundle = zero_trust_bundle(key, evidence_for(pki, key.public_key.encode()))
    check = evidence_check(policy, context=context, trust_relayed_cc_state=True)
    now = datetime.now(UTC)
    check(bundle, now)
    with pytest.raises(VerificationError) as info:
        check(bundle, now + timedelta(days=2))
    assert info.value.reason == "evidence_not_affirming" and "ocsp" in str(info.value)


def test_a_bundle_without_evidence_is_refused(
    stack_factory: StackFactory, policy: Policy, context: AppraisalContext
) -> None:
    key = enclave_key()
    ear = make_ear(key.public_key.encode())
    bundle = KeyBundle.build(key.public_key, ear.encode(), b"")  # version 1
    assert _refused(stack_factory, key, bundle, policy, context).reason == "bundle_no_evidence"


@pytest.mark.parametrize("evidence", [b"{", b"[]", b'{"version": 1, "extra": 0}', b"\xff" * 40])
def test_malformed_evidence_is_refused(
    stack_factory: StackFactory,
    policy: Policy,
    context: AppraisalContext,
    evidence: bytes,
) -> None:
    key = enclave_key()
    err = _refused(stack_factory, key, zero_trust_bundle(key, evidence), policy, context)
    assert err.reason == "evidence_malformed"


# ---- the CLI ----------------------------------------------------------------------------------


def _cli(target: str, *mode: str) -> int:
    return main(
        [
            "client",
            "generate",
            "--target",
            target,
            "--prompt",
            "via the cli",
            "--timeout",
            "20",
            *mode,
        ]
    )


def test_cli_zero_trust_mode(
    stack_factory: StackFactory,
    pki: EmulationPki,
    pki_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = enclave_key()
    stack = stack_factory(
        key=key, bundle=zero_trust_bundle(key, evidence_for(pki, key.public_key.encode()))
    )
    good, strict = tmp_path / "policy.json", tmp_path / "strict.json"
    good.write_text(json.dumps(_policy_doc(pki)))
    strict.write_text(json.dumps(_policy_doc(pki, pin_roots=False)))
    emulation = ["--trust-emulation", str(pki_dir)]

    # Evidence of a current agent (binding version 2) binds the GPUs' CC and DevTools state:
    # the client's policy alone decides.
    assert _cli(stack.target, "--policy", str(good), *emulation) == 0
    assert capsys.readouterr().out == "via the cli\n"

    # Without the emulation roots offered, or under a policy that pins none: refused, exit 1.
    assert _cli(stack.target, "--policy", str(good)) == 1
    err = capsys.readouterr().err
    assert "contraindicated" in err and "via the cli" not in err
    assert _cli(stack.target, "--policy", str(strict), *emulation) == 1
    capsys.readouterr()
    assert stack.service.stats.requests == 1

    # Version-1 evidence (an agent from before version 2): the state is the relay's word, so
    # refused unless accepted explicitly.
    key = enclave_key()
    v1 = zero_trust_bundle(key, evidence_for(pki, key.public_key.encode(), version=1))
    stack = stack_factory(key=key, bundle=v1)
    assert _cli(stack.target, "--policy", str(good), *emulation) == 1
    err = capsys.readouterr().err
    assert "relay's word" in err and stack.service.stats.requests == 0
    relayed = ["--trust-relayed-cc-state"]
    assert _cli(stack.target, "--policy", str(good), *emulation, *relayed) == 0
    assert capsys.readouterr().out == "via the cli\n"
    # The flag belongs to a zero-trust client.
    assert _cli(stack.target, "--broker-key", str(good), *relayed) == 2
    assert "goes with --policy" in capsys.readouterr().err


def test_cli_modes_are_exclusive_and_required(
    stack_factory: StackFactory, pki_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = stack_factory()
    pem = tmp_path / "broker.pem"
    pem.write_bytes(
        BROKER.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    policy = tmp_path / "policy.json"
    policy.write_text("{}")
    assert _cli(stack.target, "--broker-key", str(pem), "--policy", str(policy)) == 2
    assert "not allowed with" in capsys.readouterr().err
    assert _cli(stack.target) == 2
    assert "--broker-key --policy is required" in capsys.readouterr().err
    # Emulation roots mean nothing without a policy that may pin them: bad input, not ignored.
    assert _cli(stack.target, "--broker-key", str(pem), "--trust-emulation", str(pki_dir)) == 2
    assert "--policy" in capsys.readouterr().err
    assert stack.service.stats.requests == 0


def _logged_zero_trust_bundle(
    log: Log,
    pki: EmulationPki,
    key: HpkePrivateKey,
    *,
    logged_nonce: bytes = NONCE,
    logged_evidence: bytes | None = None,
) -> KeyBundle:
    """A version-2 bundle whose (unverifiable) EAR the broker logged, for ``logged_nonce``,
    with the bundle's evidence as the logged evidence unless ``logged_evidence`` says other."""
    ear = make_ear(key.public_key.encode(), broker=OTHER_BROKER)
    evidence = evidence_for(pki, key.public_key.encode())
    logged = logged_evidence if logged_evidence is not None else evidence
    entry, blobs = entry_for(key, ear, nonce=logged_nonce, evidence=logged)
    proof = proof_bytes(log.append(entry, blobs), entry.raw)
    return KeyBundle.build(key.public_key, ear.encode(), proof, evidence=evidence, nonce=NONCE)


def test_zero_trust_with_the_log_key_checks_the_log_proof(
    stack_factory: StackFactory,
    pki: EmulationPki,
    policy: Policy,
    context: AppraisalContext,
    log: Log,
) -> None:
    """Trusting the broker for nothing, the client still learns this session was logged: the
    entry carries the bundle's result byte for byte, its nonce and the binding of this key."""
    key = enclave_key()
    check = evidence_check(policy, context=context, log_key=LOG_SIGNER.verifier())
    stack = stack_factory(key=key, bundle=_logged_zero_trust_bundle(log, pki, key))
    pieces, err = stack.collect("logged", bundle_check=check)
    assert err is None and "".join(pieces) == "logged"

    # The broker logged this result for another session's nonce: refused before sending.
    stack = stack_factory(
        key=key, bundle=_logged_zero_trust_bundle(log, pki, key, logged_nonce=OTHER_NONCE)
    )
    pieces, err = stack.collect("secret prompt", bundle_check=check)
    assert pieces == [] and isinstance(err, VerificationError)
    assert err.reason == "log_entry_nonce"
    assert stack.relay.generate_exchanges() == []

    # The bundle's evidence is not what the broker appraised and logged (it appraised other,
    # equally valid evidence of this key): refused, so a zero-trust client only ever relies on
    # evidence the auditors' replay re-appraises.
    other = evidence_for(pki, key.public_key.encode())
    stack = stack_factory(
        key=key, bundle=_logged_zero_trust_bundle(log, pki, key, logged_evidence=other)
    )
    pieces, err = stack.collect("secret prompt", bundle_check=check)
    assert pieces == [] and isinstance(err, VerificationError)
    assert err.reason == "log_entry_evidence"
    assert stack.relay.generate_exchanges() == []


def test_cli_zero_trust_with_log_key(
    stack_factory: StackFactory,
    pki: EmulationPki,
    pki_dir: Path,
    tmp_path: Path,
    log: Log,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = enclave_key()
    good = tmp_path / "policy.json"
    good.write_text(json.dumps(_policy_doc(pki)))
    vkey, forged = tmp_path / "log.vkey", tmp_path / "forged.vkey"
    vkey.write_text(LOG_SIGNER.verifier().vkey() + "\n")
    forged.write_text(FORGER.verifier().vkey() + "\n")
    stack = stack_factory(key=key, bundle=_logged_zero_trust_bundle(log, pki, key))
    mode = ("--policy", str(good), "--trust-emulation", str(pki_dir))
    assert _cli(stack.target, *mode, "--log-key", str(vkey)) == 0
    assert capsys.readouterr().out == "via the cli\n"
    assert _cli(stack.target, *mode, "--log-key", str(forged)) == 1
    assert "checkpoint does not verify" in capsys.readouterr().err
    assert len(stack.relay.generate_exchanges()) == 1  # the refused run sent nothing


def _cc_state(cc_mode_on: bool, devtools_on: bool) -> Callable[[EvidenceBundle], EvidenceBundle]:
    def edit(b: EvidenceBundle) -> EvidenceBundle:
        return EvidenceBundle(b.cpu, b.gpus, b.switches, cc_mode_on, devtools_on)

    return edit


def test_cc_state_of_version_1_evidence_is_refused_unless_taken_on_the_relays_word(
    pki: EmulationPki, policy: Policy, context: AppraisalContext, log: Log
) -> None:
    """Version-1 evidence (an agent from before binding version 2) binds neither the GPUs' CC
    nor DevTools mode, and no signed report carries them: the relay can rewrite them (here: a
    GPU with CC off and DevTools on, shown as CC on, DevTools off) and every report still
    verifies. The log key does not settle them either: a broker colluding with the host can
    ask for version 1 and log the flipped bundle itself. So such evidence is refused with the
    log key or without, unless the caller takes the relay's word."""
    key = enclave_key()
    honest = evidence_for(pki, key.public_key.encode(), edit=_cc_state(False, True), version=1)
    flipped = evidence_for(pki, key.public_key.encode(), edit=_cc_state(True, False), version=1)
    ear = make_ear(key.public_key.encode(), broker=OTHER_BROKER)
    now = datetime.now(UTC)
    with_log_key = evidence_check(policy, context=context, log_key=LOG_SIGNER.verifier())

    # An honest broker logged the honest state; the relay flips it.
    entry, blobs = entry_for(key, ear, nonce=NONCE, evidence=honest)
    proof = proof_bytes(log.append(entry, blobs), entry.raw)
    relayed = KeyBundle.build(key.public_key, ear.encode(), proof, evidence=flipped, nonce=NONCE)
    # A colluding broker logged the flipped bundle: its log proof is good.
    entry, blobs = entry_for(key, ear, nonce=NONCE, evidence=flipped)
    colluded_proof = proof_bytes(log.append(entry, blobs), entry.raw)
    colluded = KeyBundle.build(
        key.public_key, ear.encode(), colluded_proof, evidence=flipped, nonce=NONCE
    )
    for bundle, check in (
        (relayed, evidence_check(policy, context=context)),
        (relayed, with_log_key),
        (colluded, with_log_key),
    ):
        with pytest.raises(VerificationError) as info:
            check(bundle, now)
        assert info.value.reason == "cc_state_unauthenticated"
    # Taking the relay's word is exactly what lets the flipped state through:
    evidence_check(policy, context=context, trust_relayed_cc_state=True)(relayed, now)
    # ... and the honest state itself is refused by the policy.
    honest_bundle = KeyBundle.build(
        key.public_key, ear.encode(), proof, evidence=honest, nonce=NONCE
    )
    for check in (
        with_log_key,
        evidence_check(policy, context=context, trust_relayed_cc_state=True),
    ):
        with pytest.raises(VerificationError) as info:
            check(honest_bundle, now)
        assert info.value.reason == "evidence_not_affirming" and "gpu.cc_mode" in str(info.value)
