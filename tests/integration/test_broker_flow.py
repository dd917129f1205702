"""The key-release protocol end to end over real gRPC: what is released, and what is refused."""

from __future__ import annotations

import base64
import dataclasses
import json
import sqlite3

import grpc
import pytest

from agent.agent import (
    EMULATED_LAUNCH_MEASUREMENT,
    AttestationRefusedError,
    BrokerRefusedError,
    call_broker,
    verify_log_proof,
)
from agent.client import broker_ear_check
from agent.emulation import EmulatedCpuSource, EmulatedSnp, EmulationPki, non_cc_gpu_source
from agent.rpc import convert
from agent.rpc.v1 import broker_pb2
from attest.appraise.common import ENCLAVE_SUBMODULE
from attest.binding import DeviceState
from attest.bundle import DeviceEvidenceIn, EvidenceBundle
from attest.ear import Status, verify_ear
from attest.errors import VerificationError
from attest.log.entry import decode_entry
from sealing.hpke_suite import HpkeOpenError, SuiteId, generate_keypair
from sealing.stream import KeyBundle
from tests.integration.conftest import (
    DATA_KEY,
    MANIFEST,
    MODEL,
    OTHER_DATA_KEY,
    OTHER_MANIFEST,
    OTHER_MODEL,
    Harness,
    reason_of,
)


def test_affirming_flow_releases_the_registered_key(harness: Harness) -> None:
    agent = harness.agent()
    attested = agent.attest(MODEL)
    assert attested.status is Status.AFFIRMING
    assert attested.devices == {"cpu0": "affirming", "gpu0": "affirming"}
    assert attested.result_verified and attested.log_verified
    key, release = agent.release(attested)
    assert bytes(key) == DATA_KEY
    assert release.model_version == 1
    assert release.key_id.startswith(f"{MODEL}/v1/")
    # The release is logged too, after the attestation, with its own inclusion proof.
    entry = agent.fetch_entry(release.log_proof.index)
    verify_log_proof(release.log_proof, entry, harness.keys.log_signer.verifier())
    assert release.log_proof.index > attested.log_index
    logged = decode_entry(entry)
    assert logged.model_id == MODEL
    # Entry version 2: which sealed model was released, as the agent was told.
    assert logged.version == 2 and logged.model_version == release.model_version == 1
    assert logged.manifest_sha256 == release.manifest_digest == MANIFEST


def test_replayed_nonce_is_refused_and_not_logged(harness: Harness) -> None:
    agent = harness.agent()
    session = agent.start_session(MODEL)
    bundle = agent.collect(session)
    first = agent.send_evidence(session, bundle)
    assert first.status is Status.AFFIRMING
    size = harness.server.log_store.size if harness.server else -1
    with pytest.raises(BrokerRefusedError) as e:
        agent.send_evidence(session, bundle)
    assert e.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.reason == "nonce_used"
    assert harness.server is not None and harness.server.log_store.size == size


def test_expired_nonce_is_refused(harness: Harness) -> None:
    agent = harness.agent()
    session = agent.start_session(MODEL)
    bundle = agent.collect(session)
    harness.clock.advance(121)  # the policy's nonce TTL is the default 120 s
    with pytest.raises(BrokerRefusedError) as e:
        agent.send_evidence(session, bundle)
    assert (e.value.code, e.value.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "nonce_expired")


def test_unknown_nonce_is_refused(harness: Harness) -> None:
    agent = harness.agent()
    session = agent.start_session(MODEL)
    request = convert.attest_request_to_proto(
        nonce=bytes(32),
        enclave_public_key=session.public_key,
        model_id=MODEL,
        bundle=agent.collect(session),
    )
    with pytest.raises(grpc.RpcError) as e:
        harness.stub.Attest(request, timeout=30)
    assert e.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(e.value) == "nonce_unknown"


def test_expired_result_is_refused(harness: Harness) -> None:
    agent = harness.agent()
    attested = agent.attest(MODEL)
    harness.clock.advance(300 + 61)  # result TTL 300 s plus the EAR's clock-skew allowance
    with pytest.raises(BrokerRefusedError) as e:
        agent.release(attested)
    assert (e.value.code, e.value.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ear_expired")


def test_registering_again_under_the_same_policy_leaves_live_results_usable(
    harness: Harness,
) -> None:
    """A result authorizes its model under the policy it was appraised against: the model
    registered again (new data key, version 2) with the same policy is released to a result
    issued before, and the release names the new registration (docs/broker.md)."""
    agent = harness.agent()
    attested = agent.attest(MODEL)
    harness.register(data_key=OTHER_DATA_KEY, model_version=2)
    key, release = agent.release(attested)
    assert bytes(key) == OTHER_DATA_KEY and release.model_version == 2


def test_registering_again_under_another_policy_refuses_live_results(harness: Harness) -> None:
    """The same, but the policy changed with the registration: the earlier result is refused
    (``policy_changed``); the enclave must attest again, under the new policy."""
    agent = harness.agent()
    attested = agent.attest(MODEL)
    harness.register(data_key=OTHER_DATA_KEY, model_version=2, name="rotated")
    with pytest.raises(BrokerRefusedError) as e:
        agent.release(attested)
    assert (e.value.code, e.value.reason) == (grpc.StatusCode.PERMISSION_DENIED, "policy_changed")
    key, release = agent.release(agent.attest(MODEL))
    assert bytes(key) == OTHER_DATA_KEY and release.model_version == 2


def test_result_for_another_key_cannot_be_used(harness: Harness) -> None:
    a, b = harness.agent(), harness.agent()
    attested_a = a.attest(MODEL)
    session_b = b.start_session(MODEL)
    # (1) Rewriting the EAR to name B's key breaks the broker's signature.
    header, payload, sig = attested_a.result.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["ear.lessee.enclave-key"] = (
        base64.urlsafe_b64encode(session_b.public_key).rstrip(b"=").decode()
    )
    forged = ".".join(
        [header, base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode(), sig]
    )
    with pytest.raises(grpc.RpcError) as e:
        harness.stub.ReleaseKey(broker_pb2.ReleaseKeyRequest(result=forged, model_id=MODEL))
    assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED
    # (2) Replaying A's genuine result releases a key sealed to A: B cannot open it.
    reply = convert.release_reply_from_proto(
        harness.stub.ReleaseKey(
            broker_pb2.ReleaseKeyRequest(result=attested_a.result, model_id=MODEL), timeout=30
        )
    )
    with pytest.raises(HpkeOpenError):
        session_b.open_release(reply, attested_a.result_id)
    # (3) And the result is spent: not even A gets a second release from it.
    with pytest.raises(BrokerRefusedError) as e2:
        a.release(attested_a)
    assert e2.value.reason == "result_used"


def test_result_for_another_model_is_refused(harness: Harness) -> None:
    harness.register(OTHER_MODEL, OTHER_DATA_KEY, OTHER_MANIFEST)
    attested = harness.agent().attest(MODEL)
    with pytest.raises(grpc.RpcError) as e:
        harness.stub.ReleaseKey(
            broker_pb2.ReleaseKeyRequest(result=attested.result, model_id=OTHER_MODEL)
        )
    assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(e.value) == "model_mismatch"


def test_evidence_from_another_session_is_refused(harness: Harness) -> None:
    agent = harness.agent()
    first, second = agent.start_session(MODEL), agent.start_session(MODEL)
    stale = agent.collect(first)  # bound to the first session's nonce and key
    reply = agent.send_evidence(second, stale)
    assert reply.status is Status.CONTRAINDICATED
    joined = "\n".join(reply.findings)
    assert "report_data" in joined  # the CPU report names another session
    assert "nonce" in joined  # and so does the GPU's SPDM nonce
    with pytest.raises(AttestationRefusedError):
        agent.check_result(second, reply)
    with pytest.raises(BrokerRefusedError) as e:
        call_broker(
            "ReleaseKey",
            harness.stub.ReleaseKey,
            broker_pb2.ReleaseKeyRequest(result=reply.result, model_id=MODEL),
            30.0,
        )
    assert e.value.reason == "not_affirming"


@pytest.mark.parametrize("case", ["debug_cpu", "non_cc_gpu", "wrong_measurement"])
def test_bad_hardware_states_are_contraindicated(harness: Harness, case: str) -> None:
    pki = harness.pki
    if case == "debug_cpu":
        agent = harness.agent(
            cpu=EmulatedCpuSource(
                EmulatedSnp(pki, measurement=EMULATED_LAUNCH_MEASUREMENT, policy_debug=True)
            )
        )
        field = "snp.policy.debug"
    elif case == "non_cc_gpu":
        agent = harness.agent(gpu=non_cc_gpu_source(pki))
        field = "gpu.cc_mode"
    else:
        agent = harness.agent(cpu=EmulatedCpuSource(EmulatedSnp(pki, measurement=b"\x42" * 48)))
        field = "measurement"
    with pytest.raises(AttestationRefusedError) as e:
        agent.attest(MODEL)
    assert e.value.status is Status.CONTRAINDICATED
    assert any(field in line for line in e.value.findings), e.value.findings


def test_enclave_level_findings_are_in_the_signed_status(harness: Harness) -> None:
    """A sound CPU and no GPU evidence: the refusal is an enclave-level finding, on no device.
    The signed status must say so (the ``enclave`` submodule), or the pinned agent and the
    client SDK, which read only the signed token, would trust what the broker refused."""
    agent = harness.agent()
    session = agent.start_session(MODEL)
    # Made for no GPU (a version-2 binding counts the GPUs: the CPU report of a bundle whose GPU
    # evidence was dropped would miss the binding, test_evidence_of_a_dropped_gpu_fails_...).
    binding = session.bind(DeviceState(True, False, 0, 0))
    cpu = EmulatedCpuSource(EmulatedSnp(harness.pki, measurement=EMULATED_LAUNCH_MEASUREMENT))
    bundle = EvidenceBundle(
        cpu=cpu.collect(binding.report_data), gpus=(), cc_mode_on=True, devtools_on=False
    )
    reply = agent.send_evidence(session, bundle)
    assert reply.status is Status.CONTRAINDICATED
    claims = verify_ear(
        reply.result,
        harness.keys.result_key.public_key(),
        at=harness.clock(),
        expected_nonce=session.nonce,
        expected_enclave_key=session.public_key,
    )
    assert claims.submods["cpu0"].status is Status.AFFIRMING  # the CPU itself is fine
    assert claims.submods[ENCLAVE_SUBMODULE].status is Status.CONTRAINDICATED
    assert claims.status is Status.CONTRAINDICATED
    assert any("gpu.count" in f["field"] for f in claims.extra["ear.lessee.findings"])
    with pytest.raises(AttestationRefusedError):
        agent.check_result(session, reply)
    check = broker_ear_check(harness.keys.result_key.public_key())
    key_bundle = KeyBundle.build(session.enclave_key().public_key, reply.result.encode(), b"")
    with pytest.raises(VerificationError) as refused:
        check(key_bundle, harness.clock())
    assert refused.value.reason == "ear_not_affirming"


def test_agent_believes_the_worse_of_signed_and_plain_status(harness: Harness) -> None:
    """A token whose signed status is better than the broker's plain decision (one issued
    without the ``enclave`` submodule) is refused by the pinned agent all the same."""
    agent = harness.agent()
    session = agent.start_session(MODEL)
    reply = agent.send_evidence(session, agent.collect(session))
    assert reply.status is Status.AFFIRMING
    downgraded = convert.AttestReply(
        reply.result, Status.CONTRAINDICATED, ("enclave: gpu.count",), reply.log_proof
    )
    with pytest.raises(AttestationRefusedError) as e:
        agent.check_result(session, downgraded)
    assert e.value.status is Status.CONTRAINDICATED


def test_unpinned_agent_still_gets_and_opens_the_key(harness: Harness) -> None:
    agent = harness.agent(pinned=False)
    attested = agent.attest(MODEL)
    assert not attested.result_verified and not attested.log_verified
    key, _ = agent.release(attested)
    assert bytes(key) == DATA_KEY


def test_broker_restart_mid_flow_keeps_committed_state(harness: Harness) -> None:
    agent = harness.agent()
    session = agent.start_session(MODEL)  # nonce committed before the restart
    bundle = agent.collect(session)
    harness.restart()
    agent = harness.agent()
    reply = agent.send_evidence(session, bundle)
    attested = agent.check_result(session, reply)
    size_before = harness.server.log_store.size if harness.server else -1
    harness.restart()  # the result survives a restart too
    agent = harness.agent()
    assert harness.server is not None and harness.server.log_store.size == size_before
    key, _ = agent.release(attested)
    assert bytes(key) == DATA_KEY
    harness.restart()
    agent = harness.agent()
    with pytest.raises(BrokerRefusedError) as e:  # the nonce is never accepted twice
        agent.send_evidence(session, bundle)
    assert e.value.reason == "nonce_used"
    with pytest.raises(BrokerRefusedError) as e2:  # and the result never released twice
        agent.release(attested)
    assert e2.value.reason == "result_used"
    # Every EAR the broker issued before restarts still verifies with its (unchanged) key.
    claims = verify_ear(attested.result, harness.keys.result_key.public_key(), at=harness.clock())
    assert claims.enclave_key == session.public_key


def test_nonce_rows_are_single_use_in_the_database(harness: Harness) -> None:
    agent = harness.agent()
    for _ in range(3):
        agent.attest(MODEL)
    db = sqlite3.connect(harness.state / "broker.db")
    used = db.execute("SELECT COUNT(*) FROM nonces WHERE used_at IS NOT NULL").fetchone()[0]
    results = db.execute("SELECT COUNT(DISTINCT nonce), COUNT(*) FROM results").fetchone()
    assert used == 3 and results == (3, 3)


def test_malformed_stapled_ocsp_is_a_logged_finding_not_a_burnt_nonce(harness: Harness) -> None:
    """A stapled OCSP answer that is not DER is bad evidence like a bad chain or report: the
    broker consumed the nonce before appraising, so it must answer with a signed, logged
    contraindicated result (the decision is recorded), not an INVALID_ARGUMENT that spends the
    nonce and leaves no trace in the log."""
    agent = harness.agent()
    session = agent.start_session(MODEL)
    bundle = agent.collect(session)
    gpu = bundle.gpus[0]
    bad = DeviceEvidenceIn(
        gpu.arch,
        gpu.report,
        gpu.certificate_chain_pem,
        (*gpu.ocsp_responses, b"\x30\x80"),
        gpu.rims,
    )
    bundle = EvidenceBundle(bundle.cpu, (bad,), (), bundle.cc_mode_on, bundle.devtools_on)
    assert harness.server is not None
    size = harness.server.log_store.size
    reply = agent.send_evidence(session, bundle)
    assert reply.status is Status.CONTRAINDICATED
    assert any("ocsp" in line.lower() for line in reply.findings), reply.findings
    assert harness.server.log_store.size == size + 1
    assert decode_entry(agent.fetch_entry(reply.log_proof.index)).result == reply.result


def test_nonce_expiry_holds_across_a_restart(harness: Harness) -> None:
    """The expiry is stored with the nonce: a broker restarted after it passed refuses it."""
    agent = harness.agent()
    session = agent.start_session(MODEL)
    bundle = agent.collect(session)
    harness.restart()
    harness.clock.advance(121)  # the policy's nonce TTL is the default 120 s
    with pytest.raises(BrokerRefusedError) as e:
        harness.agent().send_evidence(session, bundle)
    assert (e.value.code, e.value.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "nonce_expired")


def test_emulated_evidence_is_refused_when_the_policy_does_not_pin_the_emulation(
    harness: Harness,
) -> None:
    """``--trust-emulation`` only offers candidates: a model whose policy does not list their
    fingerprints gets contraindicated results for emulated hardware, and no key."""
    harness.register(OTHER_MODEL, OTHER_DATA_KEY, OTHER_MANIFEST, roots={})
    agent = harness.agent()
    session = agent.start_session(OTHER_MODEL)
    reply = agent.send_evidence(session, agent.collect(session))
    assert reply.status is Status.CONTRAINDICATED
    with pytest.raises(BrokerRefusedError) as e:
        call_broker(
            "ReleaseKey",
            harness.stub.ReleaseKey,
            broker_pb2.ReleaseKeyRequest(result=reply.result, model_id=OTHER_MODEL),
            30.0,
        )
    assert e.value.reason == "not_affirming"


def test_plain_x25519_enclave_key_gets_its_key_over_grpc(harness: Harness) -> None:
    """The classical suite is an option end to end: the broker seals to the suite the enclave
    key names."""
    agent = harness.agent()
    agent.suite = SuiteId.X25519_SHA256_AES256GCM
    attested = agent.attest(MODEL)
    key, release = agent.release(attested)
    assert bytes(key) == DATA_KEY
    assert release.suite == SuiteId.X25519_SHA256_AES256GCM.name


def test_refusals_of_its_own_results_are_logged_once_over_grpc(harness: Harness) -> None:
    """A refused ReleaseKey for a result this broker issued answers exactly as before and adds
    one ``release_refused`` entry, once per (result, reason); garbage adds nothing."""
    from attest.log.entry import EntryKind

    assert harness.server is not None
    log = harness.server.log_store
    harness.register(OTHER_MODEL, OTHER_DATA_KEY, OTHER_MANIFEST)
    attested = harness.agent().attest(MODEL)

    def release(result: str, model_id: str) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as e:
            harness.stub.ReleaseKey(
                broker_pb2.ReleaseKeyRequest(result=result, model_id=model_id), timeout=30
            )
        return e.value

    size = log.size
    for _ in range(2):
        err = release(attested.result, OTHER_MODEL)
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(err) == "model_mismatch"
        assert log.size == size + 1
    entry = decode_entry(log.entries(size, size + 1)[0])
    assert entry.kind is EntryKind.RELEASE_REFUSED and entry.reason == "model_mismatch"
    assert entry.result == attested.result and entry.model_id == OTHER_MODEL
    # The model record the refusal was decided under (the requested model's).
    assert (entry.version, entry.model_version, entry.manifest_sha256) == (2, 1, OTHER_MANIFEST)
    for garbage in ("a.b.c", attested.result[:-4] + "AAAA"):
        assert release(garbage, MODEL).code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.PERMISSION_DENIED,
        )
    assert log.size == size + 1
    harness.clock.advance(300 + 61)  # past the EAR's skew: refused by verify_ear, still ours
    for _ in range(2):
        err = release(attested.result, MODEL)
        assert (err.code(), reason_of(err)) == (grpc.StatusCode.PERMISSION_DENIED, "ear_expired")
    assert log.size == size + 2
    assert decode_entry(log.entries(size + 1, size + 2)[0]).reason == "expired"


@pytest.mark.parametrize("pad", ["\n", " ", "\t", "\r\n"])
def test_a_padded_copy_of_a_genuine_result_spends_nothing(harness: Harness, pad: str) -> None:
    """Whitespace around a genuine token once passed every release check (``verify_ear``
    stripped it), spent the result, and only then failed as a log entry: the enclave's own
    ReleaseKey was refused ``result_used`` and no entry said why. Now the padded copy is bad
    input before anything happens, the log does not grow, and the genuine release works."""
    assert harness.server is not None
    log = harness.server.log_store
    harness.register(OTHER_MODEL, OTHER_DATA_KEY, OTHER_MANIFEST)
    agent = harness.agent()
    attested = agent.attest(MODEL)
    size = log.size
    for token, model_id in (
        (attested.result + pad, MODEL),
        (pad + attested.result, MODEL),
        (attested.result + pad, OTHER_MODEL),  # would have been a logged model_mismatch
    ):
        with pytest.raises(grpc.RpcError) as e:
            harness.stub.ReleaseKey(
                broker_pb2.ReleaseKeyRequest(result=token, model_id=model_id), timeout=30
            )
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "compact JWS" in (e.value.details() or "")
        assert log.size == size
    key, _ = agent.release(attested)
    assert bytes(key) == DATA_KEY
    assert log.size == size + 1


def test_the_agent_binds_every_gpu_it_reports_and_refuses_a_count_that_moves(
    harness: Harness,
) -> None:
    """Two GPUs: the version-2 binding counts both and the broker affirms the bundle the agent
    made. A GPU that disappears between the count and the reports (the binding would then
    count a device the bundle lacks) is the agent's own typed error, not a broker refusal."""
    from agent.emulation import EmulatedGpu, EmulatedGpuSource
    from agent.evidence.sources import CcState, HardwareUnavailableError

    two = EmulatedGpuSource([EmulatedGpu(harness.pki, index=i) for i in range(2)])
    agent = harness.agent(gpu=two)
    session = agent.start_session(MODEL)
    bundle = agent.collect(session)
    assert len(bundle.gpus) == 2 and bundle.device_state.gpus == 2
    assert agent.send_evidence(session, bundle).status is Status.AFFIRMING

    class Shrinking(EmulatedGpuSource):
        def gpu_count(self) -> int:
            return 3  # one more than collect() will report

    agent = harness.agent(gpu=Shrinking([EmulatedGpu(harness.pki, index=i) for i in range(2)]))
    with pytest.raises(HardwareUnavailableError, match="GPU count changed"):
        agent.collect(agent.start_session(MODEL))

    class DevToolsSwitchedOn(EmulatedGpuSource):
        """DevTools goes on after the flags were read for the binding (the second read)."""

        reads = 0

        def cc_state(self) -> CcState:
            self.reads += 1
            return CcState(cc_mode_on=True, devtools_on=self.reads > 1)

    agent = harness.agent(gpu=DevToolsSwitchedOn([EmulatedGpu(harness.pki, index=0)]))
    with pytest.raises(HardwareUnavailableError, match="DevTools mode changed"):
        agent.collect(agent.start_session(MODEL))


def test_the_agent_refuses_a_version_1_challenge_unless_allowed(harness: Harness) -> None:
    """The broker picks the binding version; version 1 binds neither the GPUs' CC/DevTools
    flags nor their count. A current agent therefore answers only version 2, so a broker
    colluding with the host cannot downgrade it and log flipped flags; an operator who still
    runs a broker from before version 2 (or one with --binding-v1) allows it explicitly."""
    from attest.binding import PROTOCOL_LABEL_V1

    assert harness.server is not None
    harness.server.broker.protocol_label = PROTOCOL_LABEL_V1  # as `broker serve --binding-v1`
    with pytest.raises(VerificationError) as e:
        harness.agent().start_session(MODEL)
    assert e.value.reason == "protocol_label" and "--allow-binding-v1" in str(e.value)

    agent = harness.agent()
    agent.allow_binding_v1 = True
    session = agent.start_session(MODEL)
    assert session.protocol_label == PROTOCOL_LABEL_V1
    assert agent.send_evidence(session, agent.collect(session)).status is Status.AFFIRMING


def test_the_agent_checks_that_its_release_is_logged_as_this_release(harness: Harness) -> None:
    """The ReleaseKey reply is unsigned: a broker could name an older version it still holds a
    key for and leave the release out of the log. With the log key pinned, the agent requires
    the reply's log proof to be a release entry of this result, model, enclave key, version and
    manifest; a proof of any other entry (here the attest entry's) is refused before the key is
    opened."""
    agent = harness.agent()
    attested = agent.attest(MODEL)
    key, release = agent.release(attested)
    assert bytes(key) == DATA_KEY and release.log_verified
    log_key = harness.keys.log_signer.verifier()
    assert attested.log_proof is not None
    for forged, differs in (
        (dataclasses.replace(release, log_proof=attested.log_proof), "kind"),
        (dataclasses.replace(release, model_version=2, key_id=f"{MODEL}/v2/x"), "model_version"),
        (dataclasses.replace(release, manifest_digest=OTHER_MANIFEST), "manifest"),
    ):
        with pytest.raises(VerificationError, match=differs) as info:
            agent._check_release_logged(attested, forged, log_key)
        assert info.value.reason == "log_release_mismatch"
    # Result, model and recipient key, each made to differ alone on our side (mutation
    # testing: no test failed without any one of these comparisons).
    other = agent.attest(MODEL)
    session = attested.session
    real_model, real_key = session.model_id, session._key
    for differs, ours in (
        ("result", dataclasses.replace(attested, result=other.result)),
        ("model_id", attested),
        ("recipient_key", attested),
    ):
        if differs == "model_id":
            session.model_id = "another-model"
        if differs == "recipient_key":
            session._key = other.session._key
        try:
            with pytest.raises(VerificationError, match=differs) as info:
                agent._check_release_logged(ours, release, log_key)
            assert info.value.reason == "log_release_mismatch"
            assert f"differs in: {differs})" in str(info.value)
        finally:
            session.model_id, session._key = real_model, real_key
    # A proof of the genuine release entry that does not verify (mutation testing: no test
    # failed without the proof check).
    proof = release.log_proof
    bad = dataclasses.replace(proof, hashes=tuple(bytes(32) for _ in proof.hashes) or (bytes(32),))
    with pytest.raises(VerificationError):
        agent._check_release_logged(attested, dataclasses.replace(release, log_proof=bad), log_key)
    # The attest-side check too: a proof of the release entry (it carries the same result) is
    # not the attest entry of this session.
    reply = convert.AttestReply(attested.result, attested.status, (), release.log_proof)
    with pytest.raises(VerificationError) as info:
        agent.check_result(attested.session, reply)
    assert info.value.reason == "log_entry_mismatch"


def test_the_agents_own_pins_refuse_a_rollback(harness: Harness) -> None:
    """The operator's pins (``lessee agent --min-model-version``, ``--manifest-digest``) refuse
    a release of another version or manifest before the key is opened; the key id must name
    the model and version the reply names."""
    for kwargs, reason in (
        ({"min_model_version": 2}, "release_rollback"),
        ({"manifest_digests": [OTHER_MANIFEST]}, "release_manifest_not_pinned"),
    ):
        agent = harness.agent(**kwargs)
        with pytest.raises(VerificationError) as info:
            agent.release(agent.attest(MODEL))
        assert info.value.reason == reason
    agent = harness.agent(min_model_version=1, manifest_digests=[MANIFEST, OTHER_MANIFEST])
    key, release = agent.release(agent.attest(MODEL))
    assert bytes(key) == DATA_KEY and release.model_version == 1
    attested = agent.attest(MODEL)
    forged = convert.ReleaseReply(
        sealed_key=b"", suite="xwing", key_id=f"{OTHER_MODEL}/v1/x", model_version=1,
        manifest_digest=MANIFEST, log_proof=release.log_proof,
    )  # fmt: skip
    with pytest.raises(VerificationError) as info:
        agent._check_release(attested, forged)
    assert info.value.reason == "release_key_id"


def test_broker_text_is_escaped_before_it_reaches_the_console() -> None:
    """Findings, status details and reason codes come from the broker (or the relay): a
    newline or an ANSI escape in them could forge lines of the agent's own output."""
    from agent.agent import printable

    forged = "x\x1b[1A\x1b[2K\nmodel acme: attestation affirming"
    assert printable(forged) == "x\\x1b[1A\\x1b[2K\\nmodel acme: attestation affirming"
    assert printable("plain text") == "plain text"
    err = BrokerRefusedError("ReleaseKey", grpc.StatusCode.PERMISSION_DENIED, forged, "a\nb")
    assert "\n" not in str(err) and "\x1b" not in str(err) and err.reason == "a\\nb"
    refused = AttestationRefusedError(Status.CONTRAINDICATED, (forged,), {})
    assert "\n" not in str(refused) and "\x1b" not in str(refused)


def test_the_agents_attest_log_check_compares_result_nonce_and_binding_each(
    harness: Harness,
) -> None:
    """Without the broker's key pinned (the result unverified), the log proof is what ties the
    reply to this session: the proof must be of this session's attest entry. Each field is
    made to differ alone (a proof of another session's entry differs in all three at once, so
    mutation testing found a check of any one could be dropped unnoticed)."""
    from attest.binding import SessionBinding

    agent = harness.agent(pinned=False)
    agent.log_key = harness.keys.log_signer.verifier()
    first, second = agent.attest(MODEL), agent.attest(MODEL)
    proof = first.log_proof
    assert proof is not None

    def reply(result: str) -> convert.AttestReply:
        return convert.AttestReply(result, first.status, (), proof)

    assert agent.check_result(first.session, reply(first.result)).log_verified
    session = first.session
    real_nonce, real_binding = session.nonce, session.binding
    assert real_binding is not None
    cases = (
        ("result", lambda: None),
        ("nonce", lambda: setattr(session, "nonce", bytes(len(real_nonce)))),
        ("binding", lambda: setattr(
            session, "binding", SessionBinding(bytes(64), real_binding.gpu_nonce)
        )),
    )  # fmt: skip
    for what, change in cases:
        change()
        try:
            with pytest.raises(VerificationError) as info:
                agent.check_result(
                    session, reply(second.result if what == "result" else first.result)
                )
            assert info.value.reason == "log_entry_mismatch", what
        finally:
            session.nonce, session.binding = real_nonce, real_binding


def test_the_agent_judges_the_worse_of_the_signed_and_the_plain_status(
    harness: Harness, pki: EmulationPki
) -> None:
    """A relay may rewrite the reply's plain status; the signed result says otherwise. A
    contraindicated result relabelled affirming must be refused (mutation testing found no
    test failing when the agent took the plain status alone)."""
    agent = harness.agent(gpu=non_cc_gpu_source(pki))
    session = agent.start_session(MODEL)
    refused = agent.send_evidence(session, agent.collect(session))
    assert refused.status is Status.CONTRAINDICATED
    relabelled = dataclasses.replace(refused, status=Status.AFFIRMING)
    with pytest.raises(AttestationRefusedError):
        agent.check_result(session, relabelled)


def test_the_agent_checks_the_results_nonce_and_the_log_proof(harness: Harness) -> None:
    """With the broker key pinned and no log key, the result's nonce and enclave key tie it to
    the session (each made to differ alone); with the log key, a proof that does not
    verify is refused even though the entry it names is the genuine attest entry."""
    agent = harness.agent()
    attested = agent.attest(MODEL)
    reply = convert.AttestReply(attested.result, attested.status, (), attested.log_proof)
    session = attested.session
    real_nonce = session.nonce
    session.nonce = bytes(len(real_nonce))
    agent.log_key = None
    try:
        with pytest.raises(VerificationError) as info:
            agent.check_result(session, reply)
        assert info.value.reason == "ear_nonce"
    finally:
        session.nonce = real_nonce
    real_key = session._key
    session._key = generate_keypair()  # the same nonce, another enclave key
    try:
        with pytest.raises(VerificationError) as info:
            agent.check_result(session, reply)
        assert info.value.reason == "ear_key"
    finally:
        session._key = real_key
        agent.log_key = harness.keys.log_signer.verifier()
    assert agent.check_result(session, reply).log_verified
    proof = attested.log_proof
    assert proof is not None
    bad = dataclasses.replace(proof, hashes=tuple(bytes(32) for _ in proof.hashes) or (bytes(32),))
    with pytest.raises(VerificationError):
        agent.check_result(session, dataclasses.replace(reply, log_proof=bad))
