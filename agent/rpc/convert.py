"""The one place that converts between ``lessee.v1`` protobuf messages and domain types.

Servicers and clients never read a protobuf field themselves; they call a function here. That
keeps the trust boundary in one file, where every rule is visible:

* **Strict.** Every message and every nested message is refused if it carries fields this
  version does not know (proto3 would silently keep them; an attacker's extra field is never
  information we want). Required fields (proto3 cannot mark them) are checked: an empty
  ``nonce``, ``report`` or ``model_id`` is an error, not a default.
* **Bounded.** Sizes and counts use the same named limits as the domain types
  (``attest.bundle``, ``attest.binding``, ``attest.ear``, ``attest.policy``), so a message that
  passes here cannot be refused later for size, and nothing unbounded reaches a verifier.
* **Typed errors.** Everything raises ``InputError`` (``ConvertError``); the servicer maps it to
  ``INVALID_ARGUMENT``. Undecodable bytes raise ``ConvertError`` from ``decode``.

Domain types on the receiving side of the agent (``ChallengeReply``, ``AttestReply``,
``ReleaseReply``, ``LogProofIn``) are frozen dataclasses defined here, because they exist only
to carry what came over the wire to the code that checks it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from agent.broker.service import AttestOutcome, Challenge, ReleaseOutcome
from agent.logstore import AppendReceipt
from agent.rpc.v1 import broker_pb2, evidence_pb2, log_pb2
from attest.binding import MAX_LABEL_BYTES, MAX_NONCE_BYTES, MAX_PUBLIC_KEY_BYTES, MIN_NONCE_BYTES
from attest.bundle import (
    MAX_BUNDLE_BYTES,
    MAX_DEVICES,
    MAX_ITEM_BYTES,
    MAX_ITEMS_PER_LIST,
    DeviceEvidenceIn,
    EvidenceBundle,
    SnpEvidenceIn,
    TdxEvidenceIn,
)
from attest.ear import MAX_TOKEN_BYTES, Status, is_compact_jws
from attest.errors import InputError
from attest.findings import Finding
from attest.log.entryproof import EntryProof
from attest.log.merkle import HASH_SIZE
from attest.log.note import MAX_NOTE_BYTES
from attest.policy import MAX_POLICY_BYTES
from attest.snp.verify import MAX_CRL_BYTES

M = TypeVar("M", bound=Message)

#: Model ids are short printable names (``agent.broker.service.MAX_MODEL_ID_CHARS``).
MAX_MODEL_ID_CHARS = 128
#: Device architecture names: ``HOPPER``, ``BLACKWELL``, ``LS10``; 32 characters is plenty.
MAX_ARCH_CHARS = 32
_ARCH_RE = re.compile(r"^[A-Z0-9_]{1,32}$")
#: Findings returned to the enclave: one per failed check; a full 8-GPU refusal is < 100.
MAX_FINDINGS = 256
#: One finding line; longer ones (a long expected list) are cut, the log keeps them whole.
MAX_FINDING_CHARS = 1024
#: An inclusion proof has at most 64 nodes (trees of up to 2**64 leaves).
MAX_PROOF_HASHES = 64
#: Key ids are ``<model>/v<version>/<16 hex>``: model id + ~30 characters.
MAX_KEY_ID_CHARS = MAX_MODEL_ID_CHARS + 64
#: HPKE ``enc || ct`` of a 32-byte data key: X-Wing enc is 1120 bytes; 4 KiB bounds any suite.
MAX_SEALED_KEY_BYTES = 4096
#: Suite names are enum member names (``MLKEM768_X25519_SHA256_AES256GCM``).
MAX_SUITE_CHARS = 64
#: Checkpoints and entries travel in the log service.
MAX_ENTRY_BYTES = 1024 * 1024
MANIFEST_DIGEST_BYTES = 32
DATA_KEY_BYTES = 32


class ConvertError(InputError):
    """A protobuf message that does not meet the contract (unknown field, missing, too big)."""


# ---- generic helpers -----------------------------------------------------------------------


def decode(cls: type[M], data: bytes, *, limit: int) -> M:
    """Parse ``data`` as ``cls``: bounded, valid protobuf, no unknown fields at any depth."""
    if len(data) > limit:
        raise ConvertError(f"{cls.DESCRIPTOR.name} is larger than {limit} bytes")
    try:
        msg = cls.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ConvertError(f"{cls.DESCRIPTOR.name} is not a valid protobuf message") from exc
    reject_unknown_fields(msg)
    return msg


def reject_unknown_fields(msg: Message, path: str = "") -> None:
    """Refuse fields this contract version does not define, in ``msg`` and every sub-message."""
    where = path or msg.DESCRIPTOR.name
    if len(UnknownFieldSet(msg)):
        raise ConvertError(f"{where}: unknown field(s) (this broker speaks lessee.v1)")
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        if fd.is_repeated:
            for i, item in enumerate(value):
                reject_unknown_fields(item, f"{where}.{fd.name}[{i}]")
        else:
            reject_unknown_fields(value, f"{where}.{fd.name}")


def _bytes(value: bytes, what: str, *, lo: int = 1, hi: int) -> bytes:
    if not lo <= len(value) <= hi:
        if not value and lo:
            raise ConvertError(f"{what} is required")
        raise ConvertError(f"{what} must be {lo}..{hi} bytes, got {len(value)}")
    return bytes(value)


def _text(value: str, what: str, *, hi: int) -> str:
    if not value:
        raise ConvertError(f"{what} is required")
    if len(value) > hi or not value.isprintable():
        raise ConvertError(f"{what} must be 1..{hi} printable characters")
    return value


def _items(values: Sequence[bytes], what: str) -> tuple[bytes, ...]:
    if len(values) > MAX_ITEMS_PER_LIST:
        raise ConvertError(f"{what}: at most {MAX_ITEMS_PER_LIST} items")
    return tuple(_bytes(v, f"{what}[{i}]", hi=MAX_ITEM_BYTES) for i, v in enumerate(values))


def model_id(value: str) -> str:
    return _text(value, "model_id", hi=MAX_MODEL_ID_CHARS)


# ---- evidence -----------------------------------------------------------------------------


def _device_from_proto(d: evidence_pb2.DeviceEvidence, where: str) -> DeviceEvidenceIn:
    if not _ARCH_RE.match(d.arch):
        raise ConvertError(f"{where}.arch must be 1..{MAX_ARCH_CHARS} of A-Z, 0-9, _")
    return DeviceEvidenceIn(
        arch=d.arch,
        report=_bytes(d.report, f"{where}.report", hi=MAX_ITEM_BYTES),
        certificate_chain_pem=_bytes(
            d.certificate_chain_pem, f"{where}.certificate_chain_pem", hi=MAX_ITEM_BYTES
        ),
        ocsp_responses=_items(d.ocsp_responses, f"{where}.ocsp_responses"),
        rims=_items(d.rims, f"{where}.rims"),
    )


def bundle_from_proto(msg: evidence_pb2.EvidenceBundle) -> EvidenceBundle:
    """The domain bundle. A bundle without CPU evidence is accepted here (the appraisal then
    records a finding and the attempt is logged); everything present must be well formed."""
    if msg.ByteSize() > MAX_BUNDLE_BYTES:
        raise ConvertError(f"evidence bundle is larger than {MAX_BUNDLE_BYTES} bytes")
    reject_unknown_fields(msg, "evidence")
    cpu: SnpEvidenceIn | TdxEvidenceIn | None = None
    if msg.HasField("cpu"):
        which = msg.cpu.WhichOneof("tee")
        if which == "snp":
            cpu = SnpEvidenceIn(
                report=_bytes(msg.cpu.snp.report, "evidence.cpu.snp.report", hi=MAX_ITEM_BYTES),
                certificates=_items(msg.cpu.snp.certificates, "evidence.cpu.snp.certificates"),
                # proto3 bytes cannot be absent: empty is "no CRL", anything else is bounded
                crl=_bytes(msg.cpu.snp.crl, "evidence.cpu.snp.crl", lo=0, hi=MAX_CRL_BYTES) or None,
            )
        elif which == "tdx":
            cpu = TdxEvidenceIn(
                quote=_bytes(msg.cpu.tdx.quote, "evidence.cpu.tdx.quote", hi=MAX_ITEM_BYTES),
                collateral_json=_bytes(
                    msg.cpu.tdx.collateral_json,
                    "evidence.cpu.tdx.collateral_json",
                    lo=0,
                    hi=MAX_ITEM_BYTES,
                ),
            )
        else:
            raise ConvertError("evidence.cpu must hold one of snp, tdx")
    for name, items in (("gpus", msg.gpus), ("switches", msg.switches)):
        if len(items) > MAX_DEVICES:
            raise ConvertError(f"evidence.{name}: at most {MAX_DEVICES} devices")
    return EvidenceBundle(
        cpu=cpu,
        gpus=tuple(_device_from_proto(d, f"evidence.gpus[{i}]") for i, d in enumerate(msg.gpus)),
        switches=tuple(
            _device_from_proto(d, f"evidence.switches[{i}]") for i, d in enumerate(msg.switches)
        ),
        cc_mode_on=msg.cc_mode_on,
        devtools_on=msg.devtools_on,
    )


def _device_to_proto(d: DeviceEvidenceIn) -> evidence_pb2.DeviceEvidence:
    return evidence_pb2.DeviceEvidence(
        arch=d.arch,
        report=d.report,
        certificate_chain_pem=d.certificate_chain_pem,
        ocsp_responses=list(d.ocsp_responses),
        rims=list(d.rims),
    )


def bundle_to_proto(bundle: EvidenceBundle) -> evidence_pb2.EvidenceBundle:
    cpu = None
    if isinstance(bundle.cpu, SnpEvidenceIn):
        cpu = evidence_pb2.CpuEvidence(
            snp=evidence_pb2.SnpEvidence(
                report=bundle.cpu.report,
                certificates=list(bundle.cpu.certificates),
                crl=bundle.cpu.crl or b"",
            )
        )
    elif isinstance(bundle.cpu, TdxEvidenceIn):
        cpu = evidence_pb2.CpuEvidence(
            tdx=evidence_pb2.TdxEvidence(
                quote=bundle.cpu.quote, collateral_json=bundle.cpu.collateral_json
            )
        )
    return evidence_pb2.EvidenceBundle(
        cpu=cpu,
        gpus=[_device_to_proto(d) for d in bundle.gpus],
        switches=[_device_to_proto(d) for d in bundle.switches],
        cc_mode_on=bundle.cc_mode_on,
        devtools_on=bundle.devtools_on,
    )


# ---- log proofs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LogProofIn:
    """An inclusion proof as received: check it with ``agent.agent.verify_log_proof``."""

    index: int
    tree_size: int
    hashes: tuple[bytes, ...]
    checkpoint: bytes


def log_proof_to_proto(receipt: AppendReceipt) -> evidence_pb2.LogProof:
    return evidence_pb2.LogProof(
        index=receipt.index,
        tree_size=receipt.tree_size,
        hashes=list(receipt.inclusion_proof),
        checkpoint=receipt.checkpoint.decode("utf-8"),
    )


def key_bundle_log_proof(proof: LogProofIn, entry: bytes) -> bytes:
    """The ``log_proof`` bytes of an enclave's key bundle (``attest.log.entryproof``): the
    Attest reply's inclusion proof with the logged entry it proves. Nothing here is trusted or
    checked against the log: a client checks all of it with the log's key, so the enclave only
    passes on what the broker's log gave it."""
    return EntryProof(
        proof.index, proof.tree_size, tuple(proof.hashes), bytes(entry), proof.checkpoint
    ).encode()


def log_proof_from_proto(msg: evidence_pb2.LogProof) -> LogProofIn:
    if not msg.checkpoint:
        raise ConvertError("log_proof.checkpoint is required")
    if msg.index >= msg.tree_size:
        raise ConvertError("log_proof.index must be below tree_size")
    if len(msg.hashes) > MAX_PROOF_HASHES or any(len(h) != HASH_SIZE for h in msg.hashes):
        raise ConvertError(f"log_proof.hashes: at most {MAX_PROOF_HASHES} hashes of 32 bytes")
    cp = msg.checkpoint.encode("utf-8")
    if len(cp) > MAX_NOTE_BYTES:
        raise ConvertError(f"log_proof.checkpoint is larger than {MAX_NOTE_BYTES} bytes")
    return LogProofIn(msg.index, msg.tree_size, tuple(bytes(h) for h in msg.hashes), cp)


# ---- KeyBroker: requests (server side) ------------------------------------------------------


@dataclass(frozen=True)
class AttestArgs:
    nonce: bytes
    enclave_public_key: bytes
    model_id: str
    bundle: EvidenceBundle


@dataclass(frozen=True)
class ReleaseArgs:
    result: str
    model_id: str


@dataclass(frozen=True)
class RegisterArgs:
    model_id: str
    model_version: int
    data_key: bytes
    policy_json: str
    manifest_digest: bytes


def challenge_request_from_proto(msg: broker_pb2.ChallengeRequest) -> str:
    return model_id(msg.model_id)


def attest_request_from_proto(msg: broker_pb2.AttestRequest) -> AttestArgs:
    if not msg.HasField("evidence"):
        raise ConvertError("evidence is required")
    return AttestArgs(
        nonce=_bytes(msg.nonce, "nonce", lo=MIN_NONCE_BYTES, hi=MAX_NONCE_BYTES),
        enclave_public_key=_bytes(
            msg.enclave_public_key, "enclave_public_key", hi=MAX_PUBLIC_KEY_BYTES
        ),
        model_id=model_id(msg.model_id),
        bundle=bundle_from_proto(msg.evidence),
    )


def release_request_from_proto(msg: broker_pb2.ReleaseKeyRequest) -> ReleaseArgs:
    if not msg.result:
        raise ConvertError("result is required")
    if len(msg.result) > MAX_TOKEN_BYTES or not msg.result.isascii():
        raise ConvertError(f"result must be an ASCII token of at most {MAX_TOKEN_BYTES} bytes")
    if not is_compact_jws(msg.result):
        # The exact text is what the broker verifies and logs: a copy with whitespace around a
        # genuine token is refused here, before it can spend the result (``verify_ear`` refuses
        # it too).
        raise ConvertError("result must be a compact JWS: header.payload.signature, nothing else")
    return ReleaseArgs(result=msg.result, model_id=model_id(msg.model_id))


def register_request_from_proto(msg: broker_pb2.RegisterModelRequest) -> RegisterArgs:
    policy = msg.policy_json
    if not policy:
        raise ConvertError("policy_json is required")
    if len(policy.encode("utf-8")) > MAX_POLICY_BYTES:
        raise ConvertError(f"policy_json is larger than {MAX_POLICY_BYTES} bytes")
    return RegisterArgs(
        model_id=model_id(msg.model_id),
        model_version=msg.model_version,
        data_key=_bytes(msg.data_key, "data_key", lo=DATA_KEY_BYTES, hi=DATA_KEY_BYTES),
        policy_json=policy,
        manifest_digest=_bytes(
            msg.manifest_digest,
            "manifest_digest",
            lo=MANIFEST_DIGEST_BYTES,
            hi=MANIFEST_DIGEST_BYTES,
        ),
    )


# ---- KeyBroker: responses (server side) ------------------------------------------------------


def finding_line(f: Finding) -> str:
    """One line per failed check: severity, device, field, both values (cut if very long)."""
    line = f"[{f.severity.value}] {f}"
    line = " ".join(line.split())  # no newlines or control layout in a one-line answer
    if len(line) > MAX_FINDING_CHARS:
        line = line[: MAX_FINDING_CHARS - 3] + "..."
    return line


def challenge_to_proto(c: Challenge) -> broker_pb2.ChallengeResponse:
    return broker_pb2.ChallengeResponse(
        nonce=c.nonce,
        expires_at_unix=int(c.expires_at.timestamp()),
        protocol_label=c.protocol_label,
    )


def attest_to_proto(o: AttestOutcome) -> broker_pb2.AttestResponse:
    lines = [finding_line(f) for f in o.findings[:MAX_FINDINGS]]
    if len(o.findings) > MAX_FINDINGS:
        lines[-1] = f"... and {len(o.findings) - MAX_FINDINGS + 1} more findings (see the log)"
    return broker_pb2.AttestResponse(
        result=o.result,
        status=o.status.value,
        findings=lines,
        log_proof=log_proof_to_proto(o.receipt),
    )


def release_to_proto(o: ReleaseOutcome) -> broker_pb2.ReleaseKeyResponse:
    return broker_pb2.ReleaseKeyResponse(
        sealed_key=o.sealed_key,
        suite=o.suite,
        key_id=o.key_id,
        model_version=o.model_version,
        manifest_digest=o.manifest_digest,
        log_proof=log_proof_to_proto(o.receipt),
    )


# ---- KeyBroker: requests and responses (client side) ----------------------------------------


@dataclass(frozen=True)
class ChallengeReply:
    nonce: bytes
    expires_at: datetime
    protocol_label: str


@dataclass(frozen=True)
class AttestReply:
    result: str
    status: Status
    findings: tuple[str, ...]
    log_proof: LogProofIn


@dataclass(frozen=True)
class ReleaseReply:
    sealed_key: bytes
    suite: str
    key_id: str
    model_version: int
    manifest_digest: bytes
    log_proof: LogProofIn
    #: Set by the agent once the log proof was checked to be this release's entry under the
    #: pinned log key (``EnclaveAgent.release``); never from the wire.
    log_verified: bool = False


#: 9999-12-31T23:59:59Z: the last second ``datetime`` can hold (an int64 field can say more,
#: and ``fromtimestamp`` then raises ValueError or OSError, not a ConvertError).
MAX_UNIX_TIME = 253402300799


def challenge_reply_from_proto(msg: broker_pb2.ChallengeResponse) -> ChallengeReply:
    reject_unknown_fields(msg)
    label = msg.protocol_label
    if not label or len(label.encode()) > MAX_LABEL_BYTES:
        raise ConvertError(f"protocol_label must be 1..{MAX_LABEL_BYTES} bytes")
    if not 0 < msg.expires_at_unix <= MAX_UNIX_TIME:
        raise ConvertError(f"expires_at_unix must be 1..{MAX_UNIX_TIME}")
    return ChallengeReply(
        nonce=_bytes(msg.nonce, "nonce", lo=MIN_NONCE_BYTES, hi=MAX_NONCE_BYTES),
        expires_at=datetime.fromtimestamp(msg.expires_at_unix, UTC),
        protocol_label=label,
    )


def attest_request_to_proto(
    *, nonce: bytes, enclave_public_key: bytes, model_id: str, bundle: EvidenceBundle
) -> broker_pb2.AttestRequest:
    return broker_pb2.AttestRequest(
        nonce=nonce,
        enclave_public_key=enclave_public_key,
        model_id=model_id,
        evidence=bundle_to_proto(bundle),
    )


def attest_reply_from_proto(msg: broker_pb2.AttestResponse) -> AttestReply:
    reject_unknown_fields(msg)
    if not msg.result or len(msg.result) > MAX_TOKEN_BYTES:
        raise ConvertError("result is required (at most the EAR size limit)")
    try:
        status = Status(msg.status)
    except ValueError:
        raise ConvertError(f"status {msg.status[:32]!r} is not an AR4SI tier") from None
    if len(msg.findings) > MAX_FINDINGS:
        raise ConvertError(f"at most {MAX_FINDINGS} findings")
    if not msg.HasField("log_proof"):
        raise ConvertError("log_proof is required")
    return AttestReply(
        result=msg.result,
        status=status,
        findings=tuple(f[:MAX_FINDING_CHARS] for f in msg.findings),
        log_proof=log_proof_from_proto(msg.log_proof),
    )


def release_reply_from_proto(msg: broker_pb2.ReleaseKeyResponse) -> ReleaseReply:
    reject_unknown_fields(msg)
    if not msg.HasField("log_proof"):
        raise ConvertError("log_proof is required")
    return ReleaseReply(
        sealed_key=_bytes(msg.sealed_key, "sealed_key", hi=MAX_SEALED_KEY_BYTES),
        suite=_text(msg.suite, "suite", hi=MAX_SUITE_CHARS),
        key_id=_text(msg.key_id, "key_id", hi=MAX_KEY_ID_CHARS),
        model_version=msg.model_version,
        manifest_digest=_bytes(
            msg.manifest_digest,
            "manifest_digest",
            lo=MANIFEST_DIGEST_BYTES,
            hi=MANIFEST_DIGEST_BYTES,
        ),
        log_proof=log_proof_from_proto(msg.log_proof),
    )


# ---- AttestationLog --------------------------------------------------------------------------


def entries_to_proto(entries: Sequence[bytes]) -> log_pb2.GetEntriesResponse:
    return log_pb2.GetEntriesResponse(entries=list(entries))


def entries_from_proto(msg: log_pb2.GetEntriesResponse, *, expected_max: int) -> list[bytes]:
    reject_unknown_fields(msg)
    if len(msg.entries) > expected_max:
        raise ConvertError(f"more entries than asked for ({len(msg.entries)} > {expected_max})")
    for i, e in enumerate(msg.entries):
        _bytes(e, f"entries[{i}]", hi=MAX_ENTRY_BYTES)
    return [bytes(e) for e in msg.entries]


def proof_hashes(hashes: Sequence[bytes]) -> tuple[bytes, ...]:
    if len(hashes) > MAX_PROOF_HASHES or any(len(h) != HASH_SIZE for h in hashes):
        raise ConvertError(f"proof: at most {MAX_PROOF_HASHES} hashes of 32 bytes")
    return tuple(bytes(h) for h in hashes)


__all__ = [
    "AttestArgs",
    "AttestReply",
    "ChallengeReply",
    "ConvertError",
    "LogProofIn",
    "RegisterArgs",
    "ReleaseArgs",
    "ReleaseReply",
    "attest_reply_from_proto",
    "attest_request_from_proto",
    "attest_request_to_proto",
    "attest_to_proto",
    "bundle_from_proto",
    "bundle_to_proto",
    "challenge_reply_from_proto",
    "challenge_request_from_proto",
    "challenge_to_proto",
    "decode",
    "entries_from_proto",
    "entries_to_proto",
    "finding_line",
    "log_proof_from_proto",
    "log_proof_to_proto",
    "model_id",
    "proof_hashes",
    "register_request_from_proto",
    "reject_unknown_fields",
    "release_reply_from_proto",
    "release_request_from_proto",
    "release_to_proto",
]
