"""The key broker's logic, independent of gRPC: challenge, attest, release, register.

Flow (docs/architecture.md §3):

1. ``challenge`` issues a single-use 32-byte nonce for a model, valid for the policy's TTL.
2. ``attest`` consumes the nonce (durably, before any other work, so it can never be used
   twice), derives the session binding from (nonce, enclave key, label, and for a version-2
   label the bundle's own device state: docs/binding.md), appraises the evidence
   bundle against the model's policy, signs an EAR for the enclave key, records the decision and
   appends a log entry (evidence, policy and collateral archived by digest) whose inclusion
   proof it returns.
3. ``release_key`` accepts only an EAR this broker signed, unexpired, ``affirming``, issued for
   this model under the model's current policy, and not used for a release before; it seals the
   model's data key to the attested enclave key with HPKE and logs the release (naming the
   registered model version and sealed-manifest digest it released). A refusal of a
   result this broker signed is logged too (``release_refused``, once per result and reason)
   before the caller is answered; see ``Broker.release_key``.

Time comes from an injected clock, randomness from ``secrets``; nothing here logs key material.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from agent.broker.keywrap import KeyWrapper, model_context
from agent.broker.store import BrokerStore, ModelRecord, NonceError, ResultRecord
from agent.logstore import AppendReceipt, LogStore
from attest.appraise.common import DeviceAppraisal, appraisal_status, result_submodules
from attest.binding import (
    BINDING_CLAIM,
    PROTOCOL_LABEL_V1,
    PROTOCOL_LABEL_V2,
    SessionBinding,
    binding_claim,
    binding_version,
    derive_binding,
    derive_session_binding,
    parse_binding_claim,
)
from attest.bundle import MAX_BUNDLE_BYTES, EvidenceBundle
from attest.ear import (
    MODEL_ID_CLAIM,
    AttestationResult,
    EarError,
    SigningKey,
    Status,
    issue_ear,
    verify_ear,
)
from attest.errors import InputError, LesseeError, VerificationError
from attest.findings import Finding
from attest.log.entry import (
    MAX_MODEL_VERSION,
    BlobRef,
    RefusalReason,
    attest_entry,
    release_entry,
    release_refused_entry,
)
from attest.log.merkle import leaf_hash
from attest.policy import Policy, load_policy
from sealing.hpke_suite import HpkePublicKey
from sealing.keyrelease import DATA_KEY_BYTES, seal_data_key

_log = logging.getLogger("lessee.broker")

NONCE_BYTES = 32
MAX_MODEL_ID_CHARS = 128
#: Enclave keys decoded at Attest and kept for that result's ReleaseKey (decoding an
#: ML-KEM-768 key is the costliest step of reading it, issue #5). One per result not yet
#: released: 1024 covers the results of ~5 s at the broker's peak rate; an evicted key is
#: decoded again, so the bound only trades memory (~2.5 KiB a key) for CPU.
MAX_PENDING_ENCLAVE_KEYS = 1024
VERIFIER_BUILD = "lessee 0.1.0"


class UnknownModelError(InputError):
    """No model with that id is registered."""


class ReleaseRefusedError(VerificationError):
    """The broker will not release a key for this result (reason says why)."""


@dataclass(frozen=True)
class Appraisal:
    """What an appraiser returns: one verdict per device plus collateral to archive."""

    devices: tuple[DeviceAppraisal, ...]
    #: (role, media type, bytes) of every piece of collateral the verdict depended on.
    collateral: tuple[tuple[str, str, bytes], ...] = ()
    #: Findings that are not about one device (e.g. evidence missing for a required TEE).
    findings: tuple[Finding, ...] = ()

    @property
    def status(self) -> Status:
        return appraisal_status(self.devices, self.findings)

    def all_findings(self) -> list[Finding]:
        return [*self.findings, *(f for d in self.devices for f in d.findings)]


Appraiser = Callable[[EvidenceBundle, SessionBinding, Policy, datetime], Appraisal]


@dataclass(frozen=True)
class Challenge:
    nonce: bytes
    expires_at: datetime
    protocol_label: str


@dataclass(frozen=True)
class AttestOutcome:
    result: str
    status: Status
    findings: tuple[Finding, ...]
    receipt: AppendReceipt


@dataclass(frozen=True)
class ReleaseOutcome:
    sealed_key: bytes
    suite: str
    key_id: str
    model_version: int
    manifest_digest: bytes
    receipt: AppendReceipt


@dataclass
class Broker:
    store: BrokerStore
    wrapper: KeyWrapper
    log: LogStore
    result_key: SigningKey
    appraiser: Appraiser
    clock: Callable[[], datetime]
    #: The label every Challenge names and every Attest is appraised under. Version 2 (the
    #: default) binds the bundle's device state, so relayed CC/DevTools flags cannot be
    #: flipped; a version-1 label is the explicit setting for agents from before version 2
    #: (``lessee broker serve --binding-v1``), whose CC/DevTools flags no report authenticates.
    protocol_label: str = PROTOCOL_LABEL_V2
    verifier_build: str = VERIFIER_BUILD
    #: model id -> (policy JSON, parsed policy, its digest): parsing a policy and hashing its
    #: canonical form cost more than the rest of a Challenge, so both are done once per policy
    #: text (a re-registered model has new text and is parsed again).
    _policies: dict[str, tuple[str, Policy, str]] = field(default_factory=dict, repr=False)
    #: encoded enclave key -> decoded key, from Attest to ReleaseKey (exact bytes; a decoded
    #: public key is immutable, so handing it to another thread is safe).
    _enclave_keys: OrderedDict[bytes, HpkePublicKey] = field(
        default_factory=OrderedDict, repr=False
    )
    _enclave_keys_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: This broker process, in every release claim it makes: a claim by another instance was
    #: made by a process that has stopped (one broker serves a state directory: ``serve``
    #: holds its lock), so if that claim's log entry is not in the log, the key was never sent.
    instance: str = field(default_factory=lambda: secrets.token_hex(8))
    #: The log's size when this instance started: every entry an earlier instance appended
    #: lies before it.
    _start_size: int = field(init=False, repr=False, default=0)

    def __post_init__(self) -> None:
        self._start_size = self.log.size

    # ---- admin ---------------------------------------------------------------------------

    def register_model(
        self,
        *,
        model_id: str,
        model_version: int,
        data_key: bytes,
        policy_json: str,
        manifest_digest: bytes,
    ) -> ModelRecord:
        """Store a sealed model's data key (wrapped) and the policy that guards it."""
        _check_model_id(model_id)
        if len(data_key) != DATA_KEY_BYTES:
            raise InputError(f"data key must be {DATA_KEY_BYTES} bytes")
        if len(manifest_digest) != 32:
            raise InputError("manifest digest must be 32 bytes (SHA-256)")
        if not 0 <= model_version <= MAX_MODEL_VERSION:
            raise InputError("model version must fit in 32 bits")
        policy = load_policy(policy_json)
        key_id = f"{model_id}/v{model_version}/{secrets.token_hex(8)}"
        record = ModelRecord(
            model_id=model_id,
            model_version=model_version,
            key_id=key_id,
            wrapped_key=self.wrapper.wrap(
                data_key,
                key_id=key_id,
                model_id=model_id,
                context=model_context(
                    model_version=model_version,
                    policy_json=policy_json,
                    policy_digest=policy.digest,
                    manifest_digest=manifest_digest,
                ),
            ),
            policy_json=policy_json,
            policy_digest=policy.digest,
            manifest_digest=manifest_digest,
        )
        self.store.put_model(record)
        self._policies.pop(model_id, None)
        return record

    def _model(self, model_id: str) -> tuple[ModelRecord, Policy, str]:
        """The model's record, its policy, and the policy's digest."""
        _check_model_id(model_id)
        model = self.store.get_model(model_id)
        if model is None:
            raise UnknownModelError(f"unknown model {model_id!r}")
        cached = self._policies.get(model_id)
        if cached is None or cached[0] != model.policy_json or cached[2] != model.policy_digest:
            policy = load_policy(model.policy_json)
            cached = (model.policy_json, policy, policy.digest)
            self._policies[model_id] = cached
        return model, cached[1], cached[2]

    # ---- enclave-facing --------------------------------------------------------------------

    def challenge(self, model_id: str) -> Challenge:
        _, policy, _ = self._model(model_id)
        now = self.clock()
        nonce = secrets.token_bytes(NONCE_BYTES)
        expires = now + timedelta(seconds=policy.freshness.nonce_ttl_seconds)
        self.store.issue_nonce(
            nonce, model_id=model_id, now=now.timestamp(), expires_at=expires.timestamp()
        )
        return Challenge(nonce=nonce, expires_at=expires, protocol_label=self.protocol_label)

    def attest(
        self, *, nonce: bytes, enclave_public_key: bytes, model_id: str, bundle: EvidenceBundle
    ) -> AttestOutcome:
        model, policy, policy_digest = self._model(model_id)
        # A key we could never seal to is refused (before the nonce is spent).
        decoded = HpkePublicKey.decode(enclave_public_key)
        # The exact bytes the log archives, which the audit replay (and a zero-trust client)
        # read back with ``load_bundle``: a bundle whose JSON that refuses is refused here, before
        # the nonce is spent (the protobuf limit alone let one through: base64 is 4/3 larger).
        bundle_bytes = bundle.to_json()
        if len(bundle_bytes) > MAX_BUNDLE_BYTES:
            raise InputError(
                f"evidence bundle is {len(bundle_bytes)} bytes as archived (JSON); the limit is "
                f"{MAX_BUNDLE_BYTES}"
            )
        now = self.clock()
        issued_for = self.store.consume_nonce(nonce, now=now.timestamp())
        if issued_for != model_id:
            raise NonceError("nonce was issued for another model", reason="nonce_model")
        label = self.protocol_label
        binding = derive_session_binding(nonce, enclave_public_key, label, bundle.device_state)
        appraisal = self.appraiser(bundle, binding, policy, now)
        result_id = secrets.token_hex(16)
        expires = now + timedelta(seconds=policy.freshness.result_ttl_seconds)
        result = AttestationResult(
            submods=result_submodules(appraisal.devices, appraisal.findings, policy_digest),
            issued_at=int(now.timestamp()),
            expires_at=int(expires.timestamp()),
            verifier_build=self.verifier_build,
            nonce=nonce,
            enclave_key=enclave_public_key,
            policy_digest=policy_digest,
            result_id=result_id,
            extra={MODEL_ID_CLAIM: model_id}
            # What a version-2 binding bound, so the release and the audit replay (which have
            # no evidence at hand, or must not trust it) derive the same binding.
            | (
                {BINDING_CLAIM: binding_claim(label, bundle.device_state)}
                if binding_version(label) == 2
                else {}
            )
            | (
                {"ear.lessee.findings": [f.to_json() for f in appraisal.findings]}
                if appraisal.findings
                else {}
            ),
        )
        token = issue_ear(result, self.result_key)
        # Equal by construction (``result_submodules``); the worse of the two is what is kept,
        # so a future change that broke that could only make the broker stricter.
        status = Status.worst([appraisal.status, result.status])
        self.store.put_result(
            ResultRecord(
                result_id=result_id,
                model_id=model_id,
                enclave_key_digest=hashlib.sha256(enclave_public_key).digest(),
                nonce=nonce,
                status=status.value,
                issued_at=now.timestamp(),
                expires_at=expires.timestamp(),
            )
        )
        policy_bytes = model.policy_json.encode()
        collateral = [
            (BlobRef.of(role, media, data), data) for role, media, data in appraisal.collateral
        ]
        entry = attest_entry(
            at=now,
            nonce=nonce,
            binding=binding.report_data,
            policy=BlobRef.of("policy", "application/json", policy_bytes),
            verifier=self.verifier_build,
            result=token,
            evidence=[BlobRef.of("evidence-bundle", "application/json", bundle_bytes)],
            collateral=[ref for ref, _ in collateral],
        )
        receipt = self.log.append(entry, [policy_bytes, bundle_bytes, *(d for _, d in collateral)])
        if status is Status.AFFIRMING:  # only an affirming result can lead to a release
            with self._enclave_keys_lock:
                self._enclave_keys[enclave_public_key] = decoded
                while len(self._enclave_keys) > MAX_PENDING_ENCLAVE_KEYS:
                    self._enclave_keys.popitem(last=False)
        return AttestOutcome(token, status, tuple(appraisal.all_findings()), receipt)

    def _recipient(self, enclave_key: bytes) -> HpkePublicKey:
        """The decoded enclave key: the one Attest decoded, else decoded now."""
        with self._enclave_keys_lock:
            cached = self._enclave_keys.pop(enclave_key, None)
        return cached if cached is not None else HpkePublicKey.decode(enclave_key)

    def release_key(self, *, result: str, model_id: str) -> ReleaseOutcome:
        """Release the model's data key on the strength of ``result``, or refuse.

        Every refusal of a token that verifies with this broker's own result key -- a result
        this broker issued -- is logged as a ``release_refused`` entry before the caller is
        answered (with the same error as before: the entry changes nothing the caller sees).
        A token whose only fault is expiry is one of ours too (its signature was checked
        first), so it is logged with reason ``expired``. Tokens that do not verify (garbage,
        another signer, a malformed or foreign token) are *not* logged: anybody can send
        those, and an unauthenticated caller must not be able to grow the tamper-evident log
        with bytes of its choosing. What is logged is bounded too: at most one entry per
        (result, reason) (``BrokerStore.claim_refusal``, durable, so a restart does not reset
        it), and results exist only through Attest, which logs an entry of its own.
        """
        model, policy, _ = self._model(model_id)
        now = self.clock()
        key = self.result_key.public_key()
        try:
            claims = verify_ear(result, key, at=now)
        except EarError as exc:
            if exc.reason != "ear_expired":
                raise
            try:  # signed by us, only too old: the claims say what to log
                late = verify_ear(result, key, at=now, allow_expired=True)
            except LesseeError:
                raise exc from None
            self._log_refusal(
                claims=late,
                token=result,
                model=model,
                model_id=model_id,
                now=now,
                reason=RefusalReason.EXPIRED,
            )
            raise
        try:
            return self._release(
                claims=claims, result=result, model=model, policy=policy, model_id=model_id, now=now
            )
        except ReleaseRefusedError as exc:
            self._log_refusal(
                claims=claims,
                token=result,
                model=model,
                model_id=model_id,
                now=now,
                reason=RefusalReason(exc.reason),
            )
            raise

    def _log_refusal(
        self,
        *,
        claims: AttestationResult,
        token: str,
        model: ModelRecord,
        model_id: str,
        now: datetime,
        reason: RefusalReason,
    ) -> None:
        """Append the ``release_refused`` entry for a refusal of one of our own results,
        unless one for this (result, reason) is already logged.

        The claim in the store comes first and is undone if the entry cannot be appended, so
        a retry logs it; a crash between the two loses that one entry (never duplicates it),
        as a crash between claiming and logging a release would. The binding and recipient
        digest are those of the result's own enclave key and nonce, as a release would have
        logged them; ``policy`` is the model's policy now, which the decision was made under,
        and ``model_version``/``manifest_sha256`` (a version-2 entry) are the model record the
        decision looked at. Every logged refusal has one: an unknown model is refused by
        ``_model`` before any token is read, and that refusal is not logged.
        """
        result_id = claims.result_id
        if result_id is None or claims.nonce is None or claims.enclave_key is None:
            return  # not lessee's profile: verify_ear refuses that before we get here
        if not self.store.claim_refusal(
            result_id=result_id, reason=reason.value, refused_at=now.timestamp()
        ):
            return
        try:
            policy_bytes = model.policy_json.encode()
            binding = self._result_binding(claims, claims.nonce, claims.enclave_key)
            entry = release_refused_entry(
                at=now,
                nonce=claims.nonce,
                binding=binding.report_data,
                policy=BlobRef.of("policy", "application/json", policy_bytes),
                verifier=self.verifier_build,
                result=token,
                model_id=model_id,
                recipient_key_sha256=hashlib.sha256(claims.enclave_key).digest(),
                reason=reason,
                model_version=model.model_version,
                manifest_sha256=model.manifest_digest,
            )
            self.log.append(entry, [policy_bytes])
        except BaseException:
            self.store.forget_refusal(result_id=result_id, reason=reason.value)
            raise

    def _result_binding(
        self, claims: AttestationResult, nonce: bytes, enclave_key: bytes
    ) -> SessionBinding:
        """The binding the attest of this (verified, our own) result derived: version 2 from
        the label and device state its ``ear.lessee.binding`` claim names, version 1 (a result
        without the claim, issued before version 2 or under ``--binding-v1``) from the
        version-1 label."""
        claim = claims.extra.get(BINDING_CLAIM)
        if claim is not None:
            label, state = parse_binding_claim(claim)
            return derive_session_binding(nonce, enclave_key, label, state)
        v1 = self.protocol_label if binding_version(self.protocol_label) == 1 else PROTOCOL_LABEL_V1
        return derive_binding(nonce, enclave_key, v1)

    def _claim(
        self, result_id: str, model_id: str, now: datetime, leaf: bytes, log_size: int
    ) -> bool:
        return self.store.claim_release(
            result_id=result_id,
            model_id=model_id,
            released_at=now.timestamp(),
            entry_leaf=leaf,
            log_size=log_size,
            instance=self.instance,
        )

    def _drop_own_claim(self, result_id: str, leaf: bytes, size_at_claim: int) -> None:
        try:
            if not self.log.contains_leaf(leaf, size_at_claim, self.log.size):
                self.store.drop_release_claim(result_id=result_id, instance=self.instance)
        except Exception as exc:  # the caller re-raises the original failure
            _log.warning("release claim kept after a failed release: %s", type(exc).__name__)

    def _drop_orphan_claim(self, result_id: str) -> bool:
        """Drop the claim on ``result_id`` if an earlier broker process made it and its log
        entry is not in the log: that process stopped between the claim and the append, so no
        key was sent (ReleaseKey answers only after the append), and refusing the result as
        used would leave a ``result_used`` refusal with no release anywhere in the log. A claim
        of this process, or one from before claims named their entry, is never dropped here."""
        claim = self.store.release_claim(result_id)
        if (
            claim is None
            or claim.instance is None
            or claim.instance == self.instance
            or claim.entry_leaf is None
            or claim.log_size is None
        ):
            return False
        if self.log.contains_leaf(claim.entry_leaf, claim.log_size, self._start_size):
            return False  # logged: the release happened (its answer may have been lost)
        dropped = self.store.drop_release_claim(result_id=result_id, instance=claim.instance)
        if dropped:
            _log.warning("release claim of a stopped broker process was never logged; dropped")
        return dropped

    def _release(
        self,
        *,
        claims: AttestationResult,
        result: str,
        model: ModelRecord,
        policy: Policy,
        model_id: str,
        now: datetime,
    ) -> ReleaseOutcome:
        """The release decision for a verified token: each refusal is a ``ReleaseRefusedError``
        whose reason is a ``RefusalReason`` value, checked in that enum's order."""
        record = self.store.get_result(claims.result_id or "")
        if record is None:
            raise ReleaseRefusedError(
                "result was not issued by this broker", reason="unknown_result"
            )
        if record.model_id != model_id or claims.extra.get(MODEL_ID_CLAIM) != model_id:
            raise ReleaseRefusedError(
                "result was issued for another model", reason="model_mismatch"
            )
        if claims.status is not Status.AFFIRMING or record.status != Status.AFFIRMING.value:
            raise ReleaseRefusedError(
                f"result status is {claims.status.value}, not affirming", reason="not_affirming"
            )
        if claims.policy_digest != model.policy_digest:
            raise ReleaseRefusedError(
                "the model's policy changed since this result; attest again",
                reason="policy_changed",
            )
        if (
            policy.model_manifest_digests
            and model.manifest_digest.hex() not in policy.model_manifest_digests
        ):
            raise ReleaseRefusedError(
                "the registered manifest is not pinned by the policy", reason="manifest_pin"
            )
        if now.timestamp() > record.expires_at:
            # verify_ear allows clock skew for other parties; the broker wrote both times itself.
            raise ReleaseRefusedError("the attestation result has expired", reason="expired")
        enclave_key = claims.enclave_key or b""
        if hashlib.sha256(enclave_key).digest() != record.enclave_key_digest:
            raise ReleaseRefusedError("result names another enclave key", reason="key_mismatch")
        recipient = self._recipient(enclave_key)
        # The log entry is built (and so validated) before the claim: nothing that can fail
        # on the caller's input may come between a durable claim and its entry, or a result
        # would be spent with nothing logged.
        nonce = claims.nonce or b""
        binding = self._result_binding(claims, nonce, enclave_key)
        policy_bytes = model.policy_json.encode()
        entry = release_entry(
            at=now,
            nonce=nonce,
            binding=binding.report_data,
            policy=BlobRef.of("policy", "application/json", policy_bytes),
            verifier=self.verifier_build,
            result=result,
            model_id=model_id,
            recipient_key_sha256=record.enclave_key_digest,
            model_version=model.model_version,
            manifest_sha256=model.manifest_digest,
        )
        # Claim the result atomically before any key material is touched: exactly one of any
        # number of concurrent callers gets past this line. The claim names the entry that will
        # log it, so a claim whose entry never made it into the log (this process failed, or
        # an earlier one stopped, in between: no key was sent, since the answer waits for the
        # log) is dropped instead of refusing the result as used forever.
        leaf = leaf_hash(entry.raw)
        size_at_claim = self.log.size
        claimed = self._claim(record.result_id, model_id, now, leaf, size_at_claim)
        if not claimed and self._drop_orphan_claim(record.result_id):
            claimed = self._claim(record.result_id, model_id, now, leaf, size_at_claim)
        if not claimed:
            raise ReleaseRefusedError(
                "this result was already used for a release", reason="result_used"
            )
        try:
            data_key = self.wrapper.unwrap(
                model.wrapped_key,
                key_id=model.key_id,
                model_id=model_id,
                context=model_context(
                    model_version=model.model_version,
                    policy_json=model.policy_json,
                    policy_digest=model.policy_digest,
                    manifest_digest=model.manifest_digest,
                ),
            )
            sealed = seal_data_key(
                recipient,
                data_key,
                model_id=model_id,
                model_version=model.model_version,
                key_id=model.key_id,
                result_id=record.result_id,
            )
            del data_key
            receipt = self.log.append(entry, [policy_bytes])
        except BaseException:
            # Nothing was sent; unless the entry is in the log after all (an append that
            # committed and then failed), the claim goes too, and the result stays usable. If
            # that cannot be found out (the log or the store is closing), the claim stays: a
            # later process decides, as after a crash.
            self._drop_own_claim(record.result_id, leaf, size_at_claim)
            raise
        return ReleaseOutcome(
            sealed_key=sealed,
            suite=recipient.suite.name,
            key_id=model.key_id,
            model_version=model.model_version,
            manifest_digest=model.manifest_digest,
            receipt=receipt,
        )


def _check_model_id(model_id: str) -> None:
    # Printable ASCII: the id goes into log entries, whose text fields are ASCII (RFC 8785-safe).
    if not 0 < len(model_id) <= MAX_MODEL_ID_CHARS or not (
        model_id.isascii() and model_id.isprintable()
    ):
        raise InputError(f"model id must be 1..{MAX_MODEL_ID_CHARS} printable ASCII characters")


__all__ = [
    "Appraisal",
    "Appraiser",
    "AttestOutcome",
    "Broker",
    "Challenge",
    "ReleaseOutcome",
    "ReleaseRefusedError",
    "UnknownModelError",
]
