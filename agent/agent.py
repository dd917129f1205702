"""The in-enclave agent: attest to the key broker, receive the model's key, load the weights.

Steps (docs/architecture.md §3, flows 2-5):

1. ``start_session``: make the ephemeral HPKE key pair *here* (ML-KEM-768+X25519 by default),
   ask the broker for a nonce (``Challenge``) and the protocol label (binding version 1 or 2).
2. ``collect``: read the GPUs' CC and DevTools state (NVML) *first*, then derive the session
   binding from (nonce, enclave public key, protocol label, and for version 2 that state:
   docs/binding.md), so the signed reports authenticate the flags no report carries; the CPU
   TEE report carries the binding's 64-byte ``report_data``; every GPU's
   SPDM report carries its 32-byte ``gpu_nonce``. Real sources (configfs-tsm, NVML) where
   present; emulated ones (``agent.emulation``) on machines without CC hardware.
3. ``attest``: send the bundle; check the answer. With the broker's EAR key pinned the result
   is verified (signature, expiry, this nonce, this enclave key); with the log key pinned the
   inclusion proof is checked against the signed checkpoint and the entry is fetched and
   compared with the result. Anything but ``affirming`` raises ``AttestationRefusedError`` with
   the broker's findings.
4. ``release``: ``ReleaseKey`` returns the data key HPKE-sealed to our public key; only the
   private key in this process opens it, under an ``info`` that binds model, version, key id
   and result id.
5. ``load_sealed_model``: open the sealed directory through ``agent.loader`` (manifest pinned by
   the digest the broker registered), into numpy arrays in memory; no plaintext on disk.

The private key lives only in the ``Session`` object (``HpkePrivateKey`` refuses pickling and
has no secret in its repr); the data key is a ``bytearray`` wiped after use.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import grpc

from agent.bounded_read import read_bounded
from agent.evidence.sources import CpuEvidenceSource, GpuEvidenceSource, HardwareUnavailableError
from agent.rpc import convert
from agent.rpc.broker_service import REASON_METADATA_KEY
from agent.rpc.v1 import broker_pb2, broker_pb2_grpc, log_pb2, log_pb2_grpc
from agent.text import printable
from agent.tls import check_ca_bundle, check_tls_pair
from attest.binding import (
    PROTOCOL_LABEL_V1,
    PROTOCOL_LABEL_V2,
    DeviceState,
    SessionBinding,
    derive_session_binding,
)
from attest.bundle import EvidenceBundle
from attest.ear import MAX_TOKEN_BYTES, Status, VerifyingKey, verify_ear
from attest.errors import InputError, LesseeError, VerificationError
from attest.jsonutil import load_json
from attest.log.entry import EntryKind, decode_entry
from attest.log.entryproof import verify_entry_inclusion
from attest.log.note import NoteVerifier
from sealing.hpke_suite import DEFAULT_SUITE, HpkePrivateKey, SuiteId, generate_keypair
from sealing.keyrelease import open_data_key

#: Default deadline of one broker call. Attest verifies every device; seconds, not minutes.
DEFAULT_RPC_TIMEOUT_S = 30.0
#: What the emulated SEV-SNP guest reports as its launch measurement unless told otherwise;
#: a policy that trusts the emulation lists it in ``snp.allowed_measurements``.
EMULATED_LAUNCH_MEASUREMENT = hashlib.sha384(b"lessee emulated guest image v1").digest()

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class BrokerCallError(LesseeError):
    """A broker call failed with a gRPC status (unavailable, malformed, internal...)."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str, reason: str | None):
        self.method = method
        self.code = code
        self.broker_reason = reason
        text = f"{method}: {code.name}: {printable(details)}"
        super().__init__(text + (f" [{printable(reason)}]" if reason else ""))


class BrokerRefusedError(VerificationError):
    """The broker refused (nonce, release, unknown model): the CLI's "rejected" exit.
    ``reason`` is the broker's stable code (``nonce_used``, ``not_affirming``...)."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str, reason: str | None):
        self.method = method
        self.code = code
        text = f"{method}: {code.name}: {printable(details)}"
        super().__init__(
            text + (f" [{printable(reason)}]" if reason else ""),
            reason=printable(reason) if reason else code.name.lower(),
        )


class BrokerInputError(InputError):
    """The broker found our request malformed (INVALID_ARGUMENT): the CLI's "bad input" exit."""


class AttestationRefusedError(VerificationError):
    """The broker's result is not ``affirming``; ``findings`` are its reasons."""

    def __init__(self, status: Status, findings: tuple[str, ...], devices: Mapping[str, str]):
        self.status = status
        self.findings = findings
        self.devices = dict(devices)
        super().__init__(
            f"attestation result is {status.value}: "
            + ("; ".join(printable(f) for f in findings[:3]) if findings else "no findings given"),
            reason="not_affirming",
        )


_REFUSALS = {
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
}


def call_broker(method: str, fn: Callable[..., Any], request: Any, timeout: float) -> Any:
    """Call one unary method; turn a gRPC error into a typed lessee error with the broker's
    reason code (refusals -> ``BrokerRefusedError``, malformed -> ``BrokerInputError``)."""
    try:
        return fn(request, timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = (exc.details() if hasattr(exc, "details") else "") or ""
        reason = None
        trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
        for item in cast(Sequence[tuple[str, Any]], trailing or ()):
            if item[0] == REASON_METADATA_KEY and isinstance(item[1], str):
                reason = item[1][:64]
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise BrokerInputError(f"{method}: {printable(details[:512])}") from None
        if code in _REFUSALS:
            raise BrokerRefusedError(method, code, details[:512], reason) from None
        raise BrokerCallError(method, code, details[:512], reason) from None


# ---- channels -------------------------------------------------------------------------------

#: Client-side message limits: requests up to the broker's Attest bound, answers up to a page
#: of log entries (the server enforces its own; these keep a hostile server from flooding us).
CLIENT_MAX_SEND_BYTES = 8 * 1024 * 1024 + 64 * 1024
CLIENT_MAX_RECEIVE_BYTES = 8 * 1024 * 1024
#: TLS files (CA bundle, client certificate and key).
MAX_TLS_FILE_BYTES = 1024 * 1024


def _tls_bytes(path: Path) -> bytes:
    return read_bounded(path, MAX_TLS_FILE_BYTES, "TLS file")


def open_channel(
    target: str,
    *,
    tls_ca: Path | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    tls_server_name: str | None = None,
) -> grpc.Channel:
    """A channel to a broker. Plaintext only to a loopback target; TLS (``tls_ca`` = the CA
    that issued the broker's certificate) anywhere else. ``client_cert``/``client_key`` present
    a client certificate (the broker's admin port requires one)."""
    from agent.rpc.server import is_loopback_host, split_host_port

    host, _ = split_host_port(target, "target")
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", CLIENT_MAX_SEND_BYTES),
        ("grpc.max_receive_message_length", CLIENT_MAX_RECEIVE_BYTES),
    ]
    if (client_cert is None) != (client_key is None):
        raise InputError("--client-cert and --client-key go together")
    if tls_ca is None:
        if client_cert is not None:
            raise InputError("a client certificate needs TLS (--tls-ca)")
        if not is_loopback_host(host):
            raise InputError(f"{target} is not a loopback address: TLS is required (--tls-ca)")
        return grpc.insecure_channel(target, options=options)
    ca = _tls_bytes(tls_ca)
    check_ca_bundle(str(tls_ca), ca)
    key_pem = cert_pem = None
    if client_cert is not None and client_key is not None:
        key_pem, cert_pem = _tls_bytes(client_key), _tls_bytes(client_cert)
        check_tls_pair(str(client_cert), cert_pem, str(client_key), key_pem)
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key_pem, certificate_chain=cert_pem
    )
    if tls_server_name is not None:
        options.append(("grpc.ssl_target_name_override", tls_server_name))
    return grpc.secure_channel(target, creds, options=options)


# ---- sessions -------------------------------------------------------------------------------


#: The labels a broker's Challenge may name: version 2 (what a current broker issues) and,
#: only with ``allow_binding_v1`` (``lessee agent --allow-binding-v1``), version 1 (a broker
#: from before version 2, or one run with ``--binding-v1``). Not by default: version 1 does not
#: bind the GPUs' CC/DevTools flags or their count, and the *broker* picks the label, so a
#: broker colluding with the host could otherwise downgrade a current agent and log flipped
#: flags that no client or auditor can tell from honest ones (docs/binding.md, "Downgrade").
SUPPORTED_PROTOCOL_LABELS = (PROTOCOL_LABEL_V2, PROTOCOL_LABEL_V1)


class Session:
    """One attestation session: the enclave key pair (private part stays here), the nonce and
    the binding every report of this session must carry (``bind``: a version-2 binding needs
    the device state, read when the evidence is collected)."""

    __slots__ = (
        "_key",
        "binding",
        "expires_at",
        "model_id",
        "nonce",
        "protocol_label",
    )

    def __init__(
        self,
        key: HpkePrivateKey,
        *,
        model_id: str,
        nonce: bytes,
        expires_at: datetime,
        protocol_label: str,
    ) -> None:
        self._key = key
        self.model_id = model_id
        self.nonce = nonce
        self.expires_at = expires_at
        self.protocol_label = protocol_label
        self.binding: SessionBinding | None = None

    def bind(self, state: DeviceState) -> SessionBinding:
        """Derive (and keep) the binding for ``state``, the flags as read before any report is
        asked for; version 1 does not bind them (``InputError`` for a bad nonce or label)."""
        self.binding = derive_session_binding(
            self.nonce, self.public_key, self.protocol_label, state
        )
        return self.binding

    def enclave_key(self) -> HpkePrivateKey:
        """The session's private key, for the enclave's own services in this process (the
        streaming service serves requests sealed to the key the result attests). It never
        leaves the process."""
        return self._key

    @property
    def public_key(self) -> bytes:
        return self._key.public_key.encode()

    def __repr__(self) -> str:
        return (
            f"Session(model_id={self.model_id!r}, key_id={self._key.public_key.key_id.hex()[:16]})"
        )

    def open_release(self, reply: convert.ReleaseReply, result_id: str) -> bytearray:
        """Open the released data key with this session's private key (opaque error on any
        mismatch of model, version, key id, result id or ciphertext)."""
        key = open_data_key(
            self._key,
            reply.sealed_key,
            model_id=self.model_id,
            model_version=reply.model_version,
            key_id=reply.key_id,
            result_id=result_id,
        )
        return bytearray(key)


@dataclass(frozen=True)
class Attested:
    """An affirming result for a session, with what the agent checked about it."""

    session: Session
    result: str
    result_id: str
    status: Status
    devices: Mapping[str, str]
    findings: tuple[str, ...]
    log_index: int
    result_verified: bool
    log_verified: bool
    #: The broker's inclusion proof of the result's log entry, and the entry's bytes once
    #: fetched (with a pinned log key): what :meth:`EnclaveAgent.key_bundle_log_proof` needs.
    log_proof: convert.LogProofIn | None = None
    log_entry: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class LoadedModel:
    tensors: Mapping[str, Any] = field(repr=False)
    tensor_count: int
    total_bytes: int
    files: tuple[str, ...]


def _unverified_claims(token: str) -> dict[str, Any]:
    """The EAR's payload *without* checking its signature (no broker key pinned): enough to
    read the result id and the per-device statuses; the release itself is still bound to them."""
    if len(token) > MAX_TOKEN_BYTES:
        raise InputError("attestation result too large")
    parts = token.split(".")
    if len(parts) != 3:
        raise InputError("attestation result is not a compact JWS")
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InputError("attestation result payload is not base64url JSON") from exc
    # The strict reader: bounded nesting (a deep payload raised RecursionError), no duplicate
    # keys, UTF-8 only; its errors are InputError too.
    claims = load_json(payload, what="attestation result payload")
    if not isinstance(claims, dict):
        raise InputError("attestation result payload is not a JSON object")
    return claims


def device_statuses(claims_submods: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, body in claims_submods.items():
        status = body.get("ear.status") if isinstance(body, dict) else None
        out[str(name)] = status if isinstance(status, str) else "?"
    return out


def verify_log_proof(proof: convert.LogProofIn, entry: bytes, log_key: NoteVerifier) -> None:
    """Check that ``entry`` is at ``proof.index`` under the checkpoint, signed by ``log_key``."""
    verify_entry_inclusion(
        entry, proof.index, proof.tree_size, proof.hashes, proof.checkpoint, log_key=log_key
    )


# ---- the agent ------------------------------------------------------------------------------


class EnclaveAgent:
    """Talks to one broker over ``channel``; evidence from ``cpu`` and ``gpu`` sources."""

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        cpu: CpuEvidenceSource,
        gpu: GpuEvidenceSource,
        broker_key: VerifyingKey | None = None,
        log_key: NoteVerifier | None = None,
        suite: SuiteId = DEFAULT_SUITE,
        timeout: float = DEFAULT_RPC_TIMEOUT_S,
        clock: Clock = _utcnow,
        allow_binding_v1: bool = False,
        manifest_digests: Collection[bytes] = (),
        min_model_version: int = 0,
    ) -> None:
        self._broker = broker_pb2_grpc.KeyBrokerStub(channel)  # type: ignore[no-untyped-call]
        self._log = log_pb2_grpc.AttestationLogStub(channel)  # type: ignore[no-untyped-call]
        self.cpu = cpu
        self.gpu = gpu
        self.broker_key = broker_key
        self.log_key = log_key
        self.suite = suite
        self.timeout = timeout
        self.clock = clock
        self.allow_binding_v1 = allow_binding_v1
        #: The operator's own pins on what may be loaded (``lessee agent --manifest-digest``,
        #: ``--min-model-version``): the broker holds every version's data key, so without
        #: them a broker (with the host supplying old sealed files) could roll the model back;
        #: the log check makes that visible to auditors, the pins refuse it here.
        self.manifest_digests = frozenset(manifest_digests)
        self.min_model_version = min_model_version

    # step 1
    def start_session(self, model_id: str) -> Session:
        key = generate_keypair(self.suite)
        reply = convert.challenge_reply_from_proto(
            call_broker(
                "Challenge",
                self._broker.Challenge,
                broker_pb2.ChallengeRequest(model_id=model_id),
                self.timeout,
            )
        )
        accepted = SUPPORTED_PROTOCOL_LABELS if self.allow_binding_v1 else (PROTOCOL_LABEL_V2,)
        if reply.protocol_label not in accepted:
            v1 = reply.protocol_label == PROTOCOL_LABEL_V1
            raise VerificationError(
                f"broker asked for protocol {reply.protocol_label!r}, this agent speaks "
                f"{' or '.join(repr(x) for x in accepted)}"
                + (
                    " (version 1 binds neither the GPUs' CC/DevTools flags nor their count; "
                    "allow it only for a broker from before version 2: --allow-binding-v1)"
                    if v1
                    else ""
                ),
                reason="protocol_label",
            )
        return Session(
            key,
            model_id=model_id,
            nonce=reply.nonce,
            expires_at=reply.expires_at,
            protocol_label=reply.protocol_label,
        )

    # step 2
    def collect(self, session: Session) -> EvidenceBundle:
        # The state first: a version-2 binding binds it, so the reports asked for next
        # authenticate exactly the flags this bundle carries.
        state = self.gpu.cc_state()
        count = self.gpu.gpu_count()
        binding = session.bind(DeviceState(state.cc_mode_on, state.devtools_on, count, 0))
        cpu = self.cpu.collect(binding.report_data)
        gpus = self.gpu.collect(binding.gpu_nonce)
        if len(gpus) != count:
            # The binding counted ``count`` GPUs; a bundle with another number would fail it
            # at the broker as if the relay had dropped one. Say what happened here instead.
            raise HardwareUnavailableError(
                f"the GPU count changed while collecting evidence ({count} before, "
                f"{len(gpus)} reported); try again"
            )
        after = self.gpu.cc_state()
        if (after.cc_mode_on, after.devtools_on) != (state.cc_mode_on, state.devtools_on):
            # The binding carries the flags read before the reports; flags that moved while the
            # reports were made (DevTools switched on, say) would be sent as the old ones.
            raise HardwareUnavailableError(
                "the GPUs' CC or DevTools mode changed while collecting evidence; try again"
            )
        return EvidenceBundle(
            cpu=cpu, gpus=gpus, cc_mode_on=state.cc_mode_on, devtools_on=state.devtools_on
        )

    # step 3
    def send_evidence(self, session: Session, bundle: EvidenceBundle) -> convert.AttestReply:
        """Attest without judging the answer (the demo shows refusals with this)."""
        request = convert.attest_request_to_proto(
            nonce=session.nonce,
            enclave_public_key=session.public_key,
            model_id=session.model_id,
            bundle=bundle,
        )
        return convert.attest_reply_from_proto(
            call_broker("Attest", self._broker.Attest, request, self.timeout)
        )

    def check_result(self, session: Session, reply: convert.AttestReply) -> Attested:
        """Verify what can be verified with the pinned keys; refuse anything not affirming."""
        if self.broker_key is not None:
            claims = verify_ear(
                reply.result,
                self.broker_key,
                at=self.clock(),
                expected_nonce=session.nonce,
                expected_enclave_key=session.public_key,
            )
            result_id = claims.result_id or ""
            devices = {name: sub.status.value for name, sub in claims.submods.items()}
            status = claims.status
        else:
            raw = _unverified_claims(reply.result)
            jti = raw.get("jti")
            result_id = jti if isinstance(jti, str) else ""
            submods = raw.get("submods")
            devices = device_statuses(submods if isinstance(submods, dict) else {})
            status = reply.status
        if status is not reply.status and self.broker_key is not None:
            # The worse of the signed and the plain status: a relay that rewrote the plain field
            # can only make us refuse, and a signed status better than the broker's decision
            # (a token from a broker without enclave-level submodules) is not believed.
            status = Status.worst([status, reply.status])
            reply = convert.AttestReply(reply.result, status, reply.findings, reply.log_proof)
        log_verified = False
        entry = b""
        if self.log_key is not None:
            entry = self.fetch_entry(reply.log_proof.index)
            verify_log_proof(reply.log_proof, entry, self.log_key)
            logged = decode_entry(entry)
            binding = session.binding.report_data if session.binding is not None else None
            if (
                logged.kind is not EntryKind.ATTEST
                or logged.result != reply.result
                or logged.nonce != session.nonce
                or (binding is not None and logged.binding != binding)
            ):
                raise VerificationError(
                    "the logged entry is not the attest entry of this session's result (kind, "
                    "result, nonce or binding differ)",
                    reason="log_entry_mismatch",
                )
            log_verified = True
        if reply.status is not Status.AFFIRMING:
            raise AttestationRefusedError(reply.status, reply.findings, devices)
        if not result_id:
            raise InputError("attestation result has no result id (jti)")
        return Attested(
            session=session,
            result=reply.result,
            result_id=result_id,
            status=reply.status,
            devices=devices,
            findings=reply.findings,
            log_index=reply.log_proof.index,
            result_verified=self.broker_key is not None,
            log_verified=log_verified,
            log_proof=reply.log_proof,
            log_entry=entry,
        )

    def attest(self, model_id: str) -> Attested:
        """Steps 1-3."""
        session = self.start_session(model_id)
        return self.check_result(session, self.send_evidence(session, self.collect(session)))

    # step 4
    def release(self, attested: Attested) -> tuple[bytearray, convert.ReleaseReply]:
        """Ask for the data key and open it, after checking what the reply says was released:
        the key id names this model and the version the reply names; the operator's pins
        (``manifest_digests``, ``min_model_version``) admit that version and manifest; and,
        with the log key pinned, the reply's log proof is a release entry of this very result,
        model, enclave key, version and manifest (``log_release_*``). The reply is otherwise
        unsigned: a broker could have named an older version it still holds a key for, and
        left the release out of the log."""
        session = attested.session
        reply = convert.release_reply_from_proto(
            call_broker(
                "ReleaseKey",
                self._broker.ReleaseKey,
                broker_pb2.ReleaseKeyRequest(result=attested.result, model_id=session.model_id),
                self.timeout,
            )
        )
        self._check_release(attested, reply)
        if self.log_key is not None:
            self._check_release_logged(attested, reply, self.log_key)
            reply = dataclasses.replace(reply, log_verified=True)
        return session.open_release(reply, attested.result_id), reply

    def _check_release(self, attested: Attested, reply: convert.ReleaseReply) -> None:
        model_id = attested.session.model_id
        if not reply.key_id.startswith(f"{model_id}/v{reply.model_version}/"):
            raise VerificationError(
                f"the release's key id {printable(reply.key_id)!r} does not name model "
                f"{model_id!r} version {reply.model_version}",
                reason="release_key_id",
            )
        if reply.model_version < self.min_model_version:
            raise VerificationError(
                f"the broker released model version {reply.model_version}, older than the "
                f"pinned minimum {self.min_model_version} (a rollback)",
                reason="release_rollback",
            )
        if self.manifest_digests and reply.manifest_digest not in self.manifest_digests:
            raise VerificationError(
                f"the broker released the sealed manifest sha256:{reply.manifest_digest.hex()}, "
                "which this agent's pins do not list",
                reason="release_manifest_not_pinned",
            )

    def _check_release_logged(
        self, attested: Attested, reply: convert.ReleaseReply, log_key: NoteVerifier
    ) -> None:
        entry_bytes = self.fetch_entry(reply.log_proof.index)
        verify_log_proof(reply.log_proof, entry_bytes, log_key)
        entry = decode_entry(entry_bytes)
        session = attested.session
        expected = {
            "kind": (entry.kind, EntryKind.RELEASE),
            "result": (entry.result, attested.result),
            "model_id": (entry.model_id, session.model_id),
            "recipient_key": (
                entry.recipient_key_sha256,
                hashlib.sha256(session.public_key).digest(),
            ),
            "model_version": (entry.model_version, reply.model_version),
            "manifest": (entry.manifest_sha256, reply.manifest_digest),
        }
        differs = [name for name, (logged, ours) in expected.items() if logged != ours]
        if differs:
            raise VerificationError(
                f"the release's log proof is for an entry that does not log this release "
                f"(it differs in: {', '.join(differs)})",
                reason="log_release_mismatch",
            )

    def key_bundle_log_proof(self, attested: Attested) -> bytes:
        """The ``log_proof`` of the key bundle this enclave publishes for ``attested``: the
        broker's inclusion proof with the logged entry, fetched from the log unless the check
        already did. Clients verify it with the log's key (``agent.client.log_inclusion_check``),
        so an entry fetched unchecked here costs nothing: a wrong one is refused there."""
        if attested.log_proof is None:
            raise InputError("this attestation carries no log proof")
        entry = attested.log_entry or self.fetch_entry(attested.log_proof.index)
        return convert.key_bundle_log_proof(attested.log_proof, entry)

    def fetch_entry(self, index: int) -> bytes:
        reply = call_broker(
            "GetEntries",
            self._log.GetEntries,
            log_pb2.GetEntriesRequest(start=index, end=index + 1),
            self.timeout,
        )
        entries = convert.entries_from_proto(reply, expected_max=1)
        if len(entries) != 1:
            raise VerificationError("the log did not return the entry", reason="log_entry_missing")
        return entries[0]


# step 5
def load_sealed_model(
    sealed_dir: Path,
    data_key: bytearray,
    *,
    model_id: str,
    model_version: int,
    manifest_digest: bytes,
) -> LoadedModel:
    """Open a sealed model with the released key into numpy arrays (memory only)."""
    from agent.loader import SealedModel

    with SealedModel(
        sealed_dir,
        data_key,
        model_id=model_id,
        model_version=model_version,
        manifest_digest="sha256:" + manifest_digest.hex(),
    ) as model:
        tensors = model.load_state_dict("np")
        files = tuple(model.files)
    total = sum(int(getattr(t, "nbytes", 0)) for t in tensors.values())
    return LoadedModel(tensors=tensors, tensor_count=len(tensors), total_bytes=total, files=files)


def wipe(buf: bytearray) -> None:
    """Best-effort zeroing of a key buffer."""
    buf[:] = bytes(len(buf))


__all__ = [
    "DEFAULT_RPC_TIMEOUT_S",
    "EMULATED_LAUNCH_MEASUREMENT",
    "AttestationRefusedError",
    "Attested",
    "BrokerCallError",
    "BrokerInputError",
    "BrokerRefusedError",
    "EnclaveAgent",
    "LoadedModel",
    "Session",
    "call_broker",
    "device_statuses",
    "load_sealed_model",
    "open_channel",
    "verify_log_proof",
    "wipe",
]
