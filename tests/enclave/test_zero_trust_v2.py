"""Binding version 2 and the zero-trust client (threat T-STREAM-03): evidence made under a
version-2 binding binds the GPUs' CC and DevTools flags into every report, so a relay that
flips them makes the reports miss the binding, and the client needs neither the log key nor
``trust_relayed_cc_state`` to rely on them. Real emulated evidence, real gRPC through the test
relay (``tests/enclave/conftest.py``); version-1 evidence keeps ``cc_state_unauthenticated``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.agent import EMULATED_LAUNCH_MEASUREMENT
from agent.client import evidence_check
from agent.emulation import (
    EmulatedCpuSource,
    EmulatedGpu,
    EmulatedGpuSource,
    EmulatedSnp,
    EmulationPki,
)
from attest.appraise.composite import AppraisalContext
from attest.binding import PROTOCOL_LABEL_V2, DeviceState, derive_session_binding
from attest.bundle import EvidenceBundle, load_bundle
from attest.errors import VerificationError
from attest.policy import Policy
from sealing.hpke_suite import HpkePrivateKey
from sealing.stream import KeyBundle
from tests.enclave.conftest import OTHER_BROKER, StackFactory, enclave_key, make_ear
from tests.enclave.logproof import LOG_SIGNER, Log, entry_for, log, proof_bytes
from tests.enclave.test_zero_trust import (
    NONCE,
    context,
    evidence_for,
    policy,
    zero_trust_bundle,
)

__all__ = ["context", "log", "policy"]  # fixtures, imported for pytest


def evidence_v2(
    pki: EmulationPki, attested_key: bytes, *, cc_mode_on: bool = True, devtools_on: bool = False
) -> bytes:
    """What the agent makes under a version-2 challenge: the GPU's state read first, then
    reports carrying the binding of (nonce, key, that state)."""
    gpu = EmulatedGpuSource([EmulatedGpu(pki, cc_mode_on=cc_mode_on, devtools_on=devtools_on)])
    s = gpu.cc_state()
    state = DeviceState(s.cc_mode_on, s.devtools_on, gpu.gpu_count(), 0)
    binding = derive_session_binding(NONCE, attested_key, PROTOCOL_LABEL_V2, state)
    cpu = EmulatedCpuSource(EmulatedSnp(pki, measurement=EMULATED_LAUNCH_MEASUREMENT))
    return EvidenceBundle(
        cpu=cpu.collect(binding.report_data),
        gpus=gpu.collect(binding.gpu_nonce),
        cc_mode_on=state.cc_mode_on,
        devtools_on=state.devtools_on,
    ).to_json()


def flip(evidence: bytes, *, cc_mode_on: bool, devtools_on: bool) -> bytes:
    """The relay's edit: the same reports, other flags."""
    b = load_bundle(evidence)
    return EvidenceBundle(b.cpu, b.gpus, b.switches, cc_mode_on, devtools_on).to_json()


def _relayed(key: HpkePrivateKey, evidence: bytes) -> KeyBundle:
    return zero_trust_bundle(key, evidence)


def test_v2_evidence_needs_neither_the_log_key_nor_the_relays_word(
    stack_factory: StackFactory, pki: EmulationPki, policy: Policy, context: AppraisalContext
) -> None:
    key = enclave_key()
    bundle = _relayed(key, evidence_v2(pki, key.public_key.encode()))
    stack = stack_factory(key=key, bundle=bundle)
    pieces, err = stack.collect("hello v2", bundle_check=evidence_check(policy, context=context))
    assert err is None and "".join(pieces) == "hello v2"
    assert stack.service.stats.requests == 1


@pytest.mark.parametrize(
    "honest,shown",
    [
        ((False, False), (True, False)),  # CC off shown as on
        ((True, True), (True, False)),  # DevTools on shown as off
        ((False, True), (True, False)),  # both
    ],
)
@pytest.mark.parametrize("trust_relayed", [False, True])
def test_flipped_flags_in_v2_evidence_are_refused(
    stack_factory: StackFactory,
    pki: EmulationPki,
    policy: Policy,
    context: AppraisalContext,
    honest: tuple[bool, bool],
    shown: tuple[bool, bool],
    trust_relayed: bool,
) -> None:
    """Even a client that takes the relay's word (which let a flip through before version 2)
    refuses: the reports carry the binding of the honest flags, not of the shown ones."""
    key = enclave_key()
    genuine = evidence_v2(pki, key.public_key.encode(), cc_mode_on=honest[0], devtools_on=honest[1])
    relayed = flip(genuine, cc_mode_on=shown[0], devtools_on=shown[1])
    stack = stack_factory(key=key, bundle=_relayed(key, relayed))
    check = evidence_check(policy, context=context, trust_relayed_cc_state=trust_relayed)
    pieces, err = stack.collect("secret prompt", bundle_check=check)
    assert pieces == [] and stack.service.stats.requests == 0, "the prompt left the client"
    assert isinstance(err, VerificationError) and err.reason == "evidence_not_affirming"
    assert "report_data" in str(err)  # the CPU report misses the binding of the shown flags


def test_v2_honest_unsafe_state_is_refused_by_policy(
    pki: EmulationPki, policy: Policy, context: AppraisalContext
) -> None:
    key = enclave_key()
    bundle = _relayed(key, evidence_v2(pki, key.public_key.encode(), cc_mode_on=False))
    with pytest.raises(VerificationError) as info:
        evidence_check(policy, context=context)(bundle, datetime.now(UTC))
    assert info.value.reason == "evidence_not_affirming" and "gpu.cc_mode" in str(info.value)
    assert "report_data" not in str(info.value)  # the binding holds; the state is refused


def test_v1_evidence_needs_the_relays_word(
    pki: EmulationPki, policy: Policy, context: AppraisalContext
) -> None:
    key = enclave_key()
    bundle = _relayed(key, evidence_for(pki, key.public_key.encode(), version=1))
    now = datetime.now(UTC)
    with pytest.raises(VerificationError) as info:
        evidence_check(policy, context=context)(bundle, now)
    assert info.value.reason == "cc_state_unauthenticated"
    evidence_check(policy, context=context, trust_relayed_cc_state=True)(bundle, now)


def test_v2_evidence_with_the_log_key(
    pki: EmulationPki, policy: Policy, context: AppraisalContext, log: Log
) -> None:
    """The logged entry's version-2 binding (derived from the evidence's flags) matches, so the
    log proof verifies; an entry logging the binding of another key does not."""
    key = enclave_key()
    attested = key.public_key.encode()
    evidence = evidence_v2(pki, attested)
    ear = make_ear(attested, broker=OTHER_BROKER)
    v2 = derive_session_binding(NONCE, attested, PROTOCOL_LABEL_V2, DeviceState(True, False, 1, 0))
    now = datetime.now(UTC)
    check = evidence_check(policy, context=context, log_key=LOG_SIGNER.verifier())
    entry, blobs = entry_for(key, ear, nonce=NONCE, evidence=evidence, binding=v2.report_data)
    proof = proof_bytes(log.append(entry, blobs), entry.raw)
    check(KeyBundle.build(key.public_key, ear.encode(), proof, evidence=evidence, nonce=NONCE), now)

    other = derive_session_binding(
        NONCE, b"\x02" * 32, PROTOCOL_LABEL_V2, DeviceState(True, False, 1, 0)
    )
    entry, blobs = entry_for(key, ear, nonce=NONCE, evidence=evidence, binding=other.report_data)
    proof = proof_bytes(log.append(entry, blobs), entry.raw)
    bad = KeyBundle.build(key.public_key, ear.encode(), proof, evidence=evidence, nonce=NONCE)
    with pytest.raises(VerificationError) as info:
        check(bad, now)
    assert info.value.reason == "log_entry_binding"
