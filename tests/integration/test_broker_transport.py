"""The broker's transport: status codes for bad input, size limits, health, reflection, TLS and
admin access, the log's read service, and INTERNAL without leaks. Real server, real channels."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agent.agent import AttestationRefusedError, BrokerRefusedError, EnclaveAgent, open_channel
from agent.broker.config import BrokerConfig
from agent.demo import demo_policy
from agent.emulation import EmulationPki
from agent.rpc import convert
from agent.rpc.broker_service import INTERNAL_MESSAGE
from agent.rpc.server import serve_broker
from agent.rpc.v1 import broker_pb2, broker_pb2_grpc, evidence_pb2, log_pb2, log_pb2_grpc
from attest.errors import InputError
from attest.log.checkpoint import verify_checkpoint
from attest.log.merkle import leaf_hash, verify_consistency, verify_inclusion
from tests.integration.conftest import DATA_KEY, MANIFEST, MODEL, Harness

METHODS = [
    "/lessee.v1.KeyBroker/Challenge",
    "/lessee.v1.KeyBroker/Attest",
    "/lessee.v1.KeyBroker/ReleaseKey",
    "/lessee.v1.BrokerAdmin/RegisterModel",
    "/lessee.v1.AttestationLog/GetCheckpoint",
    "/lessee.v1.AttestationLog/GetEntries",
    "/lessee.v1.AttestationLog/GetInclusionProof",
    "/lessee.v1.AttestationLog/GetConsistencyProof",
]


def _raw(h: Harness, method: str) -> grpc.UnaryUnaryMultiCallable:  # type: ignore[type-arg]
    assert h.server is not None
    channel = grpc.insecure_channel(h.server.target)  # no client-side limits
    return channel.unary_unary(method, None, None)


def _code(fn: object, *args: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        fn(*args, timeout=30)  # type: ignore[operator]
    code = e.value.code()
    assert isinstance(code, grpc.StatusCode)
    return code


def _attest_request(h: Harness) -> broker_pb2.AttestRequest:
    agent = h.agent()
    s = agent.start_session(MODEL)
    return convert.attest_request_to_proto(
        nonce=s.nonce, enclave_public_key=s.public_key, model_id=MODEL, bundle=agent.collect(s)
    )


def test_health_and_reflection(plain_harness: Harness) -> None:
    assert plain_harness.channel is not None
    health = health_pb2_grpc.HealthStub(plain_harness.channel)
    for service in ("", "lessee.v1.KeyBroker", "lessee.v1.BrokerAdmin", "lessee.v1.AttestationLog"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(plain_harness.channel)
    answers = list(
        refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
    )
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"lessee.v1.KeyBroker", "lessee.v1.BrokerAdmin", "lessee.v1.AttestationLog"} <= names
    assert "grpc.health.v1.Health" in names


@pytest.mark.parametrize("method", METHODS)
def test_garbage_bytes_are_invalid_argument(plain_harness: Harness, method: str) -> None:
    assert (
        _code(_raw(plain_harness, method), b"\xff\xff\xff\x07garbage")
        is grpc.StatusCode.INVALID_ARGUMENT
    )


def test_malformed_messages(harness: Harness) -> None:
    challenge = _raw(harness, METHODS[0])
    assert _code(challenge, b"\x0a\x02\xff\xfe") is grpc.StatusCode.INVALID_ARGUMENT  # bad UTF-8
    assert (
        _code(challenge, b"\x0a\x01m\xa0\x06\x01") is grpc.StatusCode.INVALID_ARGUMENT
    )  # field 100
    assert _code(challenge, b"") is grpc.StatusCode.INVALID_ARGUMENT  # model id missing
    assert _code(challenge, b"\x0a\x01x") is grpc.StatusCode.NOT_FOUND  # unknown model
    request = _attest_request(harness)
    attest = harness.stub.Attest
    # An unknown field deep inside the evidence is refused, not ignored.
    nested = broker_pb2.AttestRequest()
    nested.CopyFrom(request)
    gpu = nested.evidence.gpus[0]
    gpu.MergeFromString(b"\xa2\x06\x03abc")  # field 100, length-delimited
    assert _code(attest, nested) is grpc.StatusCode.INVALID_ARGUMENT
    short_nonce = broker_pb2.AttestRequest()
    short_nonce.CopyFrom(request)
    short_nonce.nonce = b"n" * 8
    assert _code(attest, short_nonce) is grpc.StatusCode.INVALID_ARGUMENT
    no_evidence = broker_pb2.AttestRequest()
    no_evidence.CopyFrom(request)
    no_evidence.ClearField("evidence")
    assert _code(attest, no_evidence) is grpc.StatusCode.INVALID_ARGUMENT
    bad_key = broker_pb2.AttestRequest()
    bad_key.CopyFrom(request)
    bad_key.enclave_public_key = b"\x01" + bytes(10)
    assert _code(attest, bad_key) is grpc.StatusCode.INVALID_ARGUMENT
    # None of the refused requests consumed the nonce: the well-formed one still attests.
    assert (
        broker_pb2.AttestResponse.FromString(
            _raw(harness, METHODS[1])(request.SerializeToString(), timeout=30)
        ).status
        == "affirming"
    )


def test_size_limits(harness: Harness) -> None:
    request = _attest_request(harness)
    huge = broker_pb2.AttestRequest()
    huge.CopyFrom(request)
    huge.evidence.gpus[0].rims.append(b"x" * (9 * 1024 * 1024))  # over the server's limit
    attest = _raw(harness, METHODS[1])
    assert _code(attest, huge.SerializeToString()) is grpc.StatusCode.RESOURCE_EXHAUSTED
    item = broker_pb2.AttestRequest()
    item.CopyFrom(request)
    item.evidence.gpus[0].report = b"r" * (512 * 1024 + 1)  # one item over MAX_ITEM_BYTES
    assert _code(attest, item.SerializeToString()) is grpc.StatusCode.INVALID_ARGUMENT
    many = broker_pb2.AttestRequest()
    many.CopyFrom(request)
    for _ in range(65):
        many.evidence.switches.append(
            evidence_pb2.DeviceEvidence(arch="LS10", report=b"r", certificate_chain_pem=b"c")
        )
    assert _code(attest, many.SerializeToString()) is grpc.StatusCode.INVALID_ARGUMENT
    release = _raw(harness, METHODS[2])
    token = broker_pb2.ReleaseKeyRequest(result="a" * (300 * 1024), model_id=MODEL)
    assert _code(release, token.SerializeToString()) is grpc.StatusCode.RESOURCE_EXHAUSTED
    challenge = _raw(harness, METHODS[0])
    assert _code(
        challenge, broker_pb2.ChallengeRequest(model_id="m" * 2000).SerializeToString()
    ) is (grpc.StatusCode.RESOURCE_EXHAUSTED)


def test_internal_errors_leak_nothing(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    attested = harness.agent().attest(MODEL)
    db = sqlite3.connect(harness.state / "broker.db")  # corrupt the wrapped key at rest
    db.execute("UPDATE models SET wrapped_key = ? WHERE model_id = ?", (b"\x01" + bytes(60), MODEL))
    db.commit()
    db.close()
    request = broker_pb2.ReleaseKeyRequest(result=attested.result, model_id=MODEL)
    with caplog.at_level(logging.INFO, logger="lessee.broker"), pytest.raises(grpc.RpcError) as e:
        harness.stub.ReleaseKey(request, timeout=30)
    assert e.value.code() is grpc.StatusCode.INTERNAL
    assert e.value.details() == INTERNAL_MESSAGE
    events = [getattr(r, "lessee", {}) for r in caplog.records]
    assert {"method": "/lessee.v1.KeyBroker/ReleaseKey", "exception": "UnwrapError"} in events
    text = "\n".join(r.getMessage() + repr(getattr(r, "lessee", "")) for r in caplog.records)
    assert DATA_KEY.hex() not in text and attested.result not in text
    # Nothing was sent and nothing logged, so the failed release left no claim: once the
    # operator registers the model again (same policy), the same result is released.
    db = sqlite3.connect(harness.state / "broker.db")
    assert db.execute("SELECT count(*) FROM releases").fetchone()[0] == 0
    db.close()
    harness.register()
    key, _ = harness.agent().release(attested)
    assert bytes(key) == DATA_KEY


def test_a_policy_swapped_in_the_database_releases_nothing(harness: Harness) -> None:
    """Whoever can write broker.db (not the master key) can change a model's policy and its
    digest there; the appraisal then runs under the changed policy, but the data key is wrapped
    bound to the policy it was registered with, so the release fails and no key leaves: a guest
    the registered policy rejects gets nothing."""
    from agent.emulation import EmulatedCpuSource, EmulatedSnp
    from attest.policy import load_policy

    def rogue() -> EnclaveAgent:
        return harness.agent(
            cpu=EmulatedCpuSource(EmulatedSnp(harness.pki, measurement=bytes([0x11]) * 48))
        )

    with pytest.raises(AttestationRefusedError):
        rogue().attest(MODEL)  # the registered policy pins another measurement
    lax = demo_policy(list(harness.pki.root_fingerprints().values()), MANIFEST.hex())
    lax["snp"] = {"unsafe_any_measurement": True}
    text = json.dumps(lax)
    db = sqlite3.connect(harness.state / "broker.db", isolation_level=None)
    db.execute(
        "UPDATE models SET policy_json=?, policy_digest=? WHERE model_id=?",
        (text, load_policy(text).digest, MODEL),
    )
    db.close()
    attested = rogue().attest(MODEL)  # affirming under the swapped policy ...
    request = broker_pb2.ReleaseKeyRequest(result=attested.result, model_id=MODEL)
    with pytest.raises(grpc.RpcError) as e:  # ... but its key does not unwrap
        harness.stub.ReleaseKey(request, timeout=30)
    assert e.value.code() is grpc.StatusCode.INTERNAL
    assert e.value.details() == INTERNAL_MESSAGE


def test_log_service_reads_and_proofs(harness: Harness) -> None:
    agent = harness.agent()
    for _ in range(3):
        agent.release(agent.attest(MODEL))
    assert harness.channel is not None
    log = log_pb2_grpc.AttestationLogStub(harness.channel)  # type: ignore[no-untyped-call]
    vkey = harness.keys.log_signer.verifier()
    cp = verify_checkpoint(log.GetCheckpoint(log_pb2.GetCheckpointRequest()).note.encode(), vkey)
    size = cp.checkpoint.size
    assert size == 6
    entries = log.GetEntries(log_pb2.GetEntriesRequest(start=0, end=10_000)).entries
    assert len(entries) == size  # clamped to the log, never more than asked
    for i, entry in enumerate(entries):
        proof = log.GetInclusionProof(log_pb2.GetInclusionProofRequest(index=i, tree_size=size))
        verify_inclusion(i, size, leaf_hash(entry), list(proof.hashes), cp.checkpoint.root_hash)
    first = verify_checkpoint(
        harness.server.log_store.checkpoints()[2] if harness.server else b"", vkey
    ).checkpoint
    cons = log.GetConsistencyProof(log_pb2.GetConsistencyProofRequest(first=first.size))
    assert cons.second == size
    verify_consistency(
        first.size, size, list(cons.hashes), first.root_hash, cp.checkpoint.root_hash
    )
    assert _code(log.GetEntries, log_pb2.GetEntriesRequest(start=size, end=size + 5)) is (
        grpc.StatusCode.OUT_OF_RANGE
    )
    assert _code(log.GetEntries, log_pb2.GetEntriesRequest(start=3, end=3)) is (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        _code(log.GetInclusionProof, log_pb2.GetInclusionProofRequest(index=0, tree_size=size + 1))
        is grpc.StatusCode.OUT_OF_RANGE
    )
    assert _code(log.GetConsistencyProof, log_pb2.GetConsistencyProofRequest(first=0)) is (
        grpc.StatusCode.INVALID_ARGUMENT
    )


def test_plaintext_is_refused_off_loopback(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="TLS is required"):
        serve_broker(BrokerConfig(state_dir=tmp_path / "s", listen="0.0.0.0:0"))
    with pytest.raises(InputError, match="TLS is required"):
        open_channel("192.0.2.1:443")
    with pytest.raises(InputError):
        serve_broker(BrokerConfig(state_dir=tmp_path / "s", listen="no-port"))


def test_second_broker_cannot_share_a_port(plain_harness: Harness, tmp_path: Path) -> None:
    assert plain_harness.server is not None
    with pytest.raises(InputError, match="cannot listen"):
        serve_broker(BrokerConfig(state_dir=tmp_path / "other", listen=plain_harness.server.target))


# ---- TLS and admin access ------------------------------------------------------------------


def _local_non_loopback_ip() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # UDP connect sends nothing; picks the route's IP
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ipaddress.ip_address(ip).is_loopback else ip


def _admin_channel(host: str, port: int, files: dict[str, Path]) -> grpc.Channel:
    """A channel to the admin port presenting the test client certificate (``_pki``)."""
    return open_channel(
        f"{host}:{port}",
        tls_ca=files["ca"],
        client_cert=files["client_cert"],
        client_key=files["client_key"],
    )


def _pki(tmp: Path, ip: str) -> dict[str, Path]:
    """A test CA, a server certificate for ``ip`` and an admin client certificate."""
    now = datetime.now(UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("lessee test CA"))
        .issuer_name(name("lessee test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    out = {"ca": tmp / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role, san in (("server", ip), ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(name(f"lessee test {role}"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
        )
        if san is not None:
            b = b.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san))]),
                critical=False,
            )
        cert = b.sign(ca_key, hashes.SHA256())
        out[f"{role}_cert"] = tmp / f"{role}.pem"
        out[f"{role}_key"] = tmp / f"{role}.key"
        out[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{role}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return out


def test_tls_and_admin_access_off_loopback(tmp_path: Path) -> None:
    ip = _local_non_loopback_ip()
    if ip is None:
        pytest.skip("no non-loopback IPv4 address on this machine")
    files = _pki(tmp_path, ip)
    running = serve_broker(
        BrokerConfig(
            state_dir=tmp_path / "state",
            listen=f"{ip}:0",
            tls_cert=files["server_cert"],
            tls_key=files["server_key"],
            client_ca=files["ca"],
            admin_listen=f"{ip}:0",
        )
    )
    try:
        assert running.admin_port is not None
        register = broker_pb2.RegisterModelRequest(
            model_id=MODEL,
            model_version=1,
            data_key=DATA_KEY,
            policy_json='{"name": "t", "cpu_tees": ["snp"], "snp": {"unsafe_any_measurement": true}}',
            manifest_digest=MANIFEST,
        )
        # The enclave-facing port serves a remote peer over TLS, but never admin calls.
        with open_channel(f"{ip}:{running.port}", tls_ca=files["ca"]) as ch:
            admin = broker_pb2_grpc.BrokerAdminStub(ch)  # type: ignore[no-untyped-call]
            assert _code(admin.RegisterModel, register) is grpc.StatusCode.PERMISSION_DENIED
            broker = broker_pb2_grpc.KeyBrokerStub(ch)  # type: ignore[no-untyped-call]
            assert _code(broker.Challenge, broker_pb2.ChallengeRequest(model_id=MODEL)) is (
                grpc.StatusCode.NOT_FOUND
            )
        # Without a client certificate the admin port's handshake fails.
        with open_channel(f"{ip}:{running.admin_port}", tls_ca=files["ca"]) as ch:
            admin = broker_pb2_grpc.BrokerAdminStub(ch)  # type: ignore[no-untyped-call]
            assert _code(admin.RegisterModel, register) is grpc.StatusCode.UNAVAILABLE
        # With one, the admin call goes through; then the model exists for enclaves.
        with _admin_channel(ip, running.admin_port, files) as ch:
            admin = broker_pb2_grpc.BrokerAdminStub(ch)  # type: ignore[no-untyped-call]
            assert admin.RegisterModel(register, timeout=30).key_id.startswith(f"{MODEL}/v1/")
        with open_channel(f"{ip}:{running.port}", tls_ca=files["ca"]) as ch:
            broker = broker_pb2_grpc.KeyBrokerStub(ch)  # type: ignore[no-untyped-call]
            assert len(broker.Challenge(broker_pb2.ChallengeRequest(model_id=MODEL)).nonce) == 32
        # Plaintext to the TLS port does not get through.
        with grpc.insecure_channel(f"{ip}:{running.port}") as ch:
            broker = broker_pb2_grpc.KeyBrokerStub(ch)  # type: ignore[no-untyped-call]
            assert _code(broker.Challenge, broker_pb2.ChallengeRequest(model_id=MODEL)) is (
                grpc.StatusCode.UNAVAILABLE
            )
    finally:
        running.stop(1.0)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("listen", ["[::1]:0", "localhost:0"])
def test_admin_calls_from_ipv6_loopback_are_loopback(
    tmp_path: Path, pki_dir: Path, pki: EmulationPki, listen: str
) -> None:
    """gRPC names an IPv6 peer ``ipv6:%5B::1%5D:port`` (brackets percent-encoded): read as is,
    ``::1`` was never loopback, so admin calls from it -- ``broker register --target
    localhost:PORT``, where localhost resolves to ::1 first -- were refused."""
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    h = Harness(state=tmp_path / "state", pki_dir=pki_dir, pki=pki, listen=listen)
    running = h.start()
    try:
        reply = h.register()
        assert reply.key_id.startswith(f"{MODEL}/v1/")
        if listen.startswith("[::1]"):
            assert running.target.startswith("[::1]:")
    finally:
        h.stop()


def test_no_loopback_admin_leaves_admin_calls_to_the_admin_port(tmp_path: Path) -> None:
    """By default a loopback peer may make admin calls; with ``loopback_admin`` off (``broker
    serve --no-loopback-admin``) a loopback caller without a client certificate is refused,
    so a local proxy or tunnel in front of the broker does not make its callers admins."""
    files = _pki(tmp_path, "127.0.0.1")
    register = broker_pb2.RegisterModelRequest(
        model_id=MODEL,
        model_version=1,
        data_key=DATA_KEY,
        policy_json='{"name": "t", "cpu_tees": ["snp"], "snp": {"unsafe_any_measurement": true}}',
        manifest_digest=MANIFEST,
    )
    with pytest.raises(InputError, match="--admin-listen"):
        BrokerConfig(state_dir=tmp_path / "s0", loopback_admin=False)
    for loopback_admin in (True, False):
        running = serve_broker(
            BrokerConfig(
                state_dir=tmp_path / f"state-{loopback_admin}",
                listen="127.0.0.1:0",
                tls_cert=files["server_cert"],
                tls_key=files["server_key"],
                client_ca=files["ca"],
                admin_listen="127.0.0.1:0",
                loopback_admin=loopback_admin,
            )
        )
        try:
            # The enclave-facing port, from a loopback peer with no client certificate.
            with open_channel(f"127.0.0.1:{running.port}", tls_ca=files["ca"]) as ch:
                admin = broker_pb2_grpc.BrokerAdminStub(ch)  # type: ignore[no-untyped-call]
                if loopback_admin:
                    assert admin.RegisterModel(register, timeout=30).key_id.startswith(MODEL)
                else:
                    assert _code(admin.RegisterModel, register) is grpc.StatusCode.PERMISSION_DENIED
            assert running.admin_port is not None
            with _admin_channel("127.0.0.1", running.admin_port, files) as ch:
                admin = broker_pb2_grpc.BrokerAdminStub(ch)  # type: ignore[no-untyped-call]
                other = broker_pb2.RegisterModelRequest()
                other.CopyFrom(register)
                other.model_id = "via-admin-port"
                assert admin.RegisterModel(other, timeout=30).key_id.startswith("via-admin-port/")
        finally:
            running.stop(1.0)


def test_refusal_errors_carry_reason_codes(harness: Harness) -> None:
    agent = harness.agent()
    attested = agent.attest(MODEL)
    agent.release(attested)
    with pytest.raises(BrokerRefusedError) as e:
        agent.release(attested)
    assert e.value.reason == "result_used" and e.value.code is grpc.StatusCode.PERMISSION_DENIED


class _PastDeadlineContext:
    """A servicer context whose caller's deadline has already passed when the handler runs."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def time_remaining(self) -> float:
        return -0.5

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def set_trailing_metadata(self, md: object) -> None:
        pass

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise RuntimeError("aborted")


def test_deadline_passed_on_arrival_is_deadline_exceeded_and_keeps_the_nonce(
    harness: Harness,
) -> None:
    """The documented mapping: a call whose deadline passed before the handler ran is answered
    DEADLINE_EXCEEDED before any state changes, so the nonce can still be used."""
    from types import SimpleNamespace

    from agent.rpc.broker_service import (
        AttestationLogServicer,
        BrokerAdminServicer,
        KeyBrokerServicer,
        generic_handlers,
    )

    assert harness.server is not None
    handlers = generic_handlers(
        KeyBrokerServicer(harness.server.broker),
        BrokerAdminServicer(harness.server.broker),
        AttestationLogServicer(harness.server.log_store),
    )
    method = METHODS[1]
    handler = next(
        h for h in (g.service(SimpleNamespace(method=method)) for g in handlers) if h is not None
    )
    request = _attest_request(harness)
    context = _PastDeadlineContext()
    with pytest.raises(RuntimeError, match="aborted"):
        handler.unary_unary(request.SerializeToString(), context)
    assert context.aborted is not None
    assert context.aborted[0] is grpc.StatusCode.DEADLINE_EXCEEDED
    reply = broker_pb2.AttestResponse.FromString(
        _raw(harness, method)(request.SerializeToString(), timeout=30)
    )
    assert reply.status == "affirming"  # the nonce was not consumed by the late call
