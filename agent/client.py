"""Client SDK for encrypted token streams: ``async for token in client.generate(prompt)``.

What a call does, in order:

1. get the enclave's key bundle (from the enclave's ``GetKeyBundle``, through the untrusted
   relay, or from bytes the caller pinned) and decode it strictly;
2. verify it *as of now*: either with the pinned broker key (the EAR must verify under that key,
   be affirming, unexpired, and name exactly this bundle's encoded enclave key), or, for zero
   trust in the broker, with :func:`evidence_check` (the client appraises the enclave's own
   evidence, carried in a version-2 bundle, with ``attest/`` under its own policy: the reports
   must carry the binding of the session nonce and *this* key), or with any other
   caller-supplied :data:`~sealing.stream.KeyAttestationCheck`; with the log's pinned key
   (:func:`log_inclusion_check`, or ``evidence_check(..., log_key=...)``) also that the bundle's
   log proof shows exactly this attestation result logged, for this nonce and this key;
3. seal the prompt to the verified key, stamped with ``clock()`` as its send time
   (``ClientStream.start``), and call ``Generate``;
4. open the head and each record in order, yielding text as it decodes (tokens are raw bytes and
   a byte-level token may end inside a UTF-8 character, so decoding is incremental);
5. on the transport's end, require the final record.

Errors (all ``attest.errors`` types, so the CLI maps them to exit codes):

* :class:`~sealing.stream.StreamError`: any manipulation of the stream after it began
  (modified, reordered, dropped, duplicated, spliced, replayed or truncated records). Opaque on
  purpose. Tokens yielded before it are authentic, but the stream as a whole is refused.
* :class:`GenerationAborted`: the enclave itself ended the stream early (an authenticated ABORT
  record, with its reason code). A relay cannot forge it, and cannot turn it into a clean end.
* :class:`EnclaveUnavailable`: no authenticated data arrived (connection refused, a gRPC error
  status before the head). The status comes from an unauthenticated party, so it is reported
  as what it is, never as the enclave's verdict; :class:`GenerationTimeout` when the caller's
  own deadline passed mid-stream. Three refusals of the enclave's replay guard have their own
  subclasses, each saying what to do: :class:`RequestReplayRefused` (``ALREADY_EXISTS``: this
  request reached the enclave before, so someone replayed or duplicated it on the way),
  :class:`ClientClockRefused` (``OUT_OF_RANGE``: the send time is outside the enclave's window;
  check this machine's clock) and :class:`EnclaveBusy` (``RESOURCE_EXHAUSTED``: retry later).
  ``FAILED_PRECONDITION`` (the request was sealed to a key the enclave no longer has) is
  :class:`EnclaveKeyChanged`: the cached bundle is dropped and the prompt is not sent again,
  since the status is unauthenticated and a relay that kept the first answer and forged it
  would get a second answer to choose from; the next call fetches the bundle anew. With
  ``retry_on_new_key=True`` the client retries once itself, only if the bundle fetched again
  names a new attested key (the same key is :class:`KeyRotationUnconfirmed`) -- which a host
  able to run a second attested enclave can still exploit.
* :class:`BundleError` / ``EarError``: the key bundle did not verify; nothing was sent.
* :class:`TokenDecodeError`: authenticated output that is not UTF-8 (an engine bug).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hashlib
import math
import string
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc

from agent.enclave.service import (
    GENERATE_METHOD,
    GET_KEY_BUNDLE_METHOD,
    MAX_GENERATE_REQUEST_MESSAGE,
    MAX_RESPONSE_MESSAGE,
)
from agent.rpc.v1 import enclave_pb2
from attest.appraise.common import DeviceAppraisal, appraisal_status
from attest.appraise.composite import AppraisalContext, appraise_bundle
from attest.binding import (
    BINDING_CLAIM,
    DEFAULT_PROTOCOL_LABEL,
    PROTOCOL_LABEL_V2,
    DeviceState,
    SessionBinding,
    binding_version,
    derive_session_binding,
    parse_binding_claim,
)
from attest.bundle import EvidenceBundle, load_bundle
from attest.ear import MODEL_ID_CLAIM, AttestationResult, Status, VerifyingKey, verify_ear
from attest.errors import InputError, LesseeError, ParseError, VerificationError
from attest.findings import Finding, Severity
from attest.log.entry import EntryKind, LogEntry
from attest.log.entryproof import decode_entry_proof
from attest.log.note import NoteVerifier
from attest.policy import Policy
from sealing.stream import (
    DEFAULT_RECORD_SIZE,
    DEFAULT_REQUEST_PAD_BLOCK,
    AbortReason,
    ClientStream,
    GenerationParams,
    KeyAttestationCheck,
    KeyBundle,
    StreamAborted,
    StreamError,
    Token,
    VerifiedKeyBundle,
    verify_bundle,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "BundleError",
    "ClientClockRefused",
    "EnclaveBusy",
    "EnclaveClient",
    "EnclaveKeyChanged",
    "EnclaveUnavailable",
    "GenerationAborted",
    "GenerationTimeout",
    "KeyRotationUnconfirmed",
    "LogProofCheck",
    "RequestReplayRefused",
    "StreamError",
    "SyncEnclaveClient",
    "TokenDecodeError",
    "broker_ear_check",
    "evidence_check",
    "log_inclusion_check",
    "verify_bundle_log_proof",
]

#: Default deadline of one ``Generate`` call (and of one bundle fetch). Matches the enclave's
#: default stream time limit, so a healthy stream is never cut by the client first.
DEFAULT_TIMEOUT_S = 600.0
#: Longest deadline a caller may set: one day, as the enclave's own bound.
MAX_TIMEOUT_S = 86_400.0
#: Characters of an unauthenticated gRPC status message quoted in an error: enough to debug a
#: "malformed request (field)", too little to carry a convincing phishing text.
MAX_STATUS_DETAIL_CHARS = 120

_T = TypeVar("_T")


class EnclaveUnavailable(LesseeError):  # noqa: N818 (reads as a state: "enclave unavailable")
    """No authenticated response: the RPC failed before the stream's head arrived.

    ``code`` is the gRPC status name (``UNAVAILABLE``, ``INVALID_ARGUMENT``...). It and the
    quoted detail come from whoever answered, possibly the relay, so they are hints, not facts.
    """

    def __init__(self, message: str, *, code: str) -> None:
        self.code = code
        super().__init__(message)


class GenerationTimeout(EnclaveUnavailable):
    """The caller's own deadline passed before the final record: the output is incomplete."""


class RequestReplayRefused(EnclaveUnavailable):
    """``ALREADY_EXISTS`` before the head: the enclave says it accepted this request before.

    This client sends each sealed request once, so a copy reached the enclave first: the relay
    replayed or duplicated it. That copy got the only answer the enclave gives to this request,
    in keys only this client could derive, and it was not delivered here. A retry seals a new
    request. (Unauthenticated, like every status: a relay can also just say so.)
    """


class ClientClockRefused(EnclaveUnavailable):
    """``OUT_OF_RANGE`` before the head: the enclave refused the request's send time as outside
    its window (two minutes either side by default). Check this machine's clock; otherwise the
    request was held back on the way for longer than the window."""


class EnclaveBusy(EnclaveUnavailable):
    """``RESOURCE_EXHAUSTED`` before the head: the enclave (or gRPC in front of it) refused the
    request for load, e.g. its replay guard is at its bound of live request ids. Retry later."""


class EnclaveKeyChanged(EnclaveUnavailable):
    """``FAILED_PRECONDITION`` before the head: the enclave says the request was sealed to a key
    it no longer holds (it restarted, with a new key). Not authenticated: a relay that kept the
    enclave's answer can say the same. So the prompt is not sealed again on the client's own
    initiative: the cached bundle is dropped, and the next call fetches and verifies it anew.
    With ``retry_on_new_key=True`` the client instead retries once itself, if the bundle
    fetched again names another attested key; that gives a host able to run a second attested
    enclave under the same broker (a replica, or a restart) a second answer to choose from."""


class KeyRotationUnconfirmed(EnclaveUnavailable):
    """``FAILED_PRECONDITION`` before the head (the enclave no longer has the key the request
    was sealed to), but the bundle fetched again still offers that same attested key.

    Raised only with ``retry_on_new_key=True`` (else :class:`EnclaveKeyChanged` comes first).
    An enclave that restarted offers a new key, and the SDK retries once with it. The same key
    means the status was not the enclave's: a relay that forwarded the request, kept the answer
    and reported a stale key would, if the prompt were sealed again, hold a second answer to
    choose from (the choice the replay guard denies it). So nothing is sent again."""


class GenerationAborted(LesseeError):  # noqa: N818 (an outcome, named as one)
    """The enclave aborted the stream (authenticated). Tokens already yielded are authentic but
    the answer is incomplete. ``reason`` is the 16-bit code from the ABORT record."""

    def __init__(self, reason: int) -> None:
        self.reason = reason
        try:
            self.reason_name: str | None = AbortReason(reason).name
        except ValueError:
            self.reason_name = None
        super().__init__(f"the enclave aborted the stream ({self.reason_name or reason})")


class BundleError(VerificationError):
    """The key bundle fetched from the enclave is malformed or for an unexpected key."""


class TokenDecodeError(VerificationError):
    """The enclave's (authenticated) output is not valid UTF-8."""

    def __init__(self) -> None:
        super().__init__("the enclave's output is not valid UTF-8", reason="token_not_utf8")


#: Checks a bundle's log proof against the verified attestation result; raises to reject.
LogProofCheck = Callable[[KeyBundle, AttestationResult, datetime], None]


def broker_ear_check(
    broker_key: VerifyingKey,
    *,
    log_proof_check: LogProofCheck | None = None,
    model_id: str | None = None,
) -> KeyAttestationCheck:
    """The check for a pinned broker key: the bundle's attestation result must be an EAR that
    verifies under ``broker_key`` as of ``at``, is affirming, and names this bundle's encoded
    enclave key (``ear.lessee.enclave-key``).

    ``model_id``: the result must also have been issued for this model (the broker's
    ``ear.lessee.model-id`` claim). A broker serving several models appraises each under its
    own policy; without it, an enclave attested for another model, under a laxer policy, passes.

    The log proof is opaque to the stream layer and is *not* covered by the EAR's signature: it
    is checked only when ``log_proof_check`` is given (it runs after the EAR passed, with the
    verified result, so it can match the logged entry to the result); pass
    :func:`log_inclusion_check` with the log's pinned key. Without it, a broker that signs a
    result it never logs goes unnoticed by this client.
    """

    def check(bundle: KeyBundle, at: datetime) -> None:
        try:
            token = bundle.attestation_result.decode("ascii")
            result = verify_ear(
                token, broker_key, at=at, expected_enclave_key=bundle.public_key.encode()
            )
        except (UnicodeDecodeError, ParseError):
            # Malformed bytes from the network are a rejection here, not a usage error.
            raise VerificationError(
                "the bundle's attestation result is not a well-formed EAR", reason="ear_malformed"
            ) from None
        if result.status is not Status.AFFIRMING:
            raise VerificationError(
                f"the attestation result is {result.status.value}, not affirming",
                reason="ear_not_affirming",
            )
        if model_id is not None and result.extra.get(MODEL_ID_CLAIM) != model_id:
            raise VerificationError(
                f"the attestation result was not issued for model {model_id!r}",
                reason="ear_model",
            )
        if log_proof_check is not None:
            log_proof_check(bundle, result, at)

    return check


def verify_bundle_log_proof(
    bundle: KeyBundle,
    log_key: NoteVerifier,
    *,
    result: AttestationResult | None = None,
    origin: str | None = None,
    protocol_label: str = DEFAULT_PROTOCOL_LABEL,
) -> LogEntry:
    """Check that the bundle's log proof shows *this bundle's* attestation result in the log
    that ``log_key`` signs, for this bundle's session and key; return the logged entry.

    In order: the proof decodes (``attest.log.entryproof``); its checkpoint verifies under
    ``log_key`` (and names ``origin`` when given); the inclusion proof leads from the entry's
    leaf hash at its index to that checkpoint's root; the entry decodes and is an ``attest``
    entry; its ``result`` is byte for byte the bundle's attestation result (so the broker cannot
    give an enclave a result it did not log); its nonce is the EAR's ``eat_nonce`` (``result``,
    when the caller verified the EAR) and the bundle's session nonce (version 2); and its
    binding is one derived from that nonce and exactly this bundle's encoded key, so the
    logged appraisal is about this key (version 1 under ``protocol_label``, or version 2 with
    the device state the verified result's ``ear.lessee.binding`` claim names or the bundle's
    evidence carries); and a version-2 bundle's evidence is byte for byte the
    evidence that entry logged (its one evidence blob's SHA-256). Every failure is a
    :class:`VerificationError` whose ``reason`` starts with ``log_``.
    """
    if not bundle.log_proof:
        raise VerificationError("the key bundle carries no log proof", reason="log_proof_missing")
    try:
        proof = decode_entry_proof(bundle.log_proof)
    except ParseError as exc:
        raise VerificationError(
            f"the bundle's log proof is malformed: {exc}", reason="log_proof_malformed"
        ) from None
    entry = proof.verify(log_key, expected_origin=origin)
    if entry.kind is not EntryKind.ATTEST:
        raise VerificationError(
            f"the logged entry is a {entry.kind.value} entry, not an attest entry",
            reason="log_entry_kind",
        )
    if entry.result.encode("ascii") != bundle.attestation_result:
        raise VerificationError(
            "the logged entry does not carry this bundle's attestation result",
            reason="log_entry_mismatch",
        )
    for nonce in (result.nonce if result is not None else None, bundle.nonce or None):
        if nonce is not None and nonce != entry.nonce:
            raise VerificationError(
                "the logged entry is for another session nonce", reason="log_entry_nonce"
            )
    if not any(
        b.report_data == entry.binding
        for b in _log_bindings(entry.nonce, bundle, result, protocol_label)
    ):
        raise VerificationError(
            "the logged entry's binding is not that of its nonce and this bundle's key",
            reason="log_entry_binding",
        )
    if bundle.evidence and [r.sha256 for r in entry.evidence] != [
        hashlib.sha256(bundle.evidence).digest()
    ]:
        # A version-2 bundle's evidence must be the very bytes the broker appraised and logged
        # (the agent sends what it publishes; both are the canonical evidence JSON): then a
        # zero-trust client's decision rests on evidence the auditors' replay re-appraises.
        raise VerificationError(
            "the bundle's evidence is not the evidence the logged attestation appraised",
            reason="log_entry_evidence",
        )
    return entry


def _log_bindings(
    nonce: bytes, bundle: KeyBundle, result: AttestationResult | None, protocol_label: str
) -> list[SessionBinding]:
    """The bindings a logged entry for this nonce and this bundle's key may carry: version 1
    under ``protocol_label`` (unless that is a version-2 label), and version 2 for the state the
    verified result names and the state the bundle's evidence carries. Inputs that cannot be
    derived (malformed) give no candidate, so the entry then fails to match."""
    key = bundle.public_key.encode()
    wanted: list[tuple[str, DeviceState | None]] = []
    if binding_version(protocol_label) == 1:
        wanted.append((protocol_label, None))
    if result is not None and BINDING_CLAIM in result.extra:
        with contextlib.suppress(InputError):
            wanted.append(parse_binding_claim(result.extra[BINDING_CLAIM]))
    if bundle.evidence:
        try:
            state = load_bundle(bundle.evidence).device_state
        except InputError:
            state = None
        if state is not None:
            wanted.append((PROTOCOL_LABEL_V2, state))
    out = []
    for label, st in wanted:
        try:
            out.append(derive_session_binding(nonce, key, label, st))
        except InputError:
            continue
    return out


def log_inclusion_check(
    log_key: NoteVerifier,
    *,
    origin: str | None = None,
    protocol_label: str = DEFAULT_PROTOCOL_LABEL,
) -> LogProofCheck:
    """The ``log_proof_check`` of :func:`broker_ear_check` for a pinned log key (a C2SP
    signed-note verifier, as ``lessee audit verify --log-key`` reads): runs
    :func:`verify_bundle_log_proof` with the verified EAR, so the entry must also carry the
    EAR's nonce. A checkpoint does not expire: what this adds is accountability (the result is
    in the log auditors replay), not freshness, which the EAR's expiry gives."""

    def check(bundle: KeyBundle, result: AttestationResult, at: datetime) -> None:
        verify_bundle_log_proof(
            bundle, log_key, result=result, origin=origin, protocol_label=protocol_label
        )

    return check


#: Reject findings named in an ``evidence_not_affirming`` error (the rest are counted).
MAX_NAMED_FINDINGS = 3


def evidence_check(
    policy: Policy,
    *,
    context: AppraisalContext | None = None,
    protocol_label: str = DEFAULT_PROTOCOL_LABEL,
    log_key: NoteVerifier | None = None,
    log_origin: str | None = None,
    trust_relayed_cc_state: bool = False,
) -> KeyAttestationCheck:
    """The check for zero trust in the broker: appraise the enclave's own evidence.

    The bundle must carry the evidence it attested with and that session's nonce (version 2).
    The evidence is parsed and appraised with ``attest/`` exactly as the broker appraises it
    (every signature to the pinned vendor roots, or to roots ``policy`` pins; revocation from
    the collateral stapled in the evidence or held in ``context``; measurements and RIMs), as
    of ``at``, under the *client's* ``policy``, against the binding of the bundle's nonce and
    *this bundle's* encoded key: reports made for another key cannot carry it, so the verdict
    is about exactly the key the prompt will be sealed to. Only an affirming verdict passes.

    The broker's result, if any, is not consulted (a broker that lies changes nothing here).
    What the broker's nonce no longer gives: freshness. Evidence does not expire, so a key
    whose enclave was compromised later keeps passing until a revocation or a measurement the
    policy refuses catches it; appraising as of now checks every certificate, OCSP answer and
    RIM at this moment (docs/streams.md, "zero trust in the broker").

    With ``log_key``, the bundle's log proof must also verify (:func:`verify_bundle_log_proof`,
    the EAR unread but compared byte for byte with the logged entry, whose nonce must be the
    bundle's): trusting the broker for nothing, the client still learns that this session's
    appraisal is in the public log, where an auditor replays it.

    The GPUs' CC mode and DevTools mode are not in any signed report (NVML reports them, as
    NVIDIA's own verifier reads them): in the bundle they are the agent's word, and they reach
    this client through the relay. Evidence made under binding version 2 (docs/binding.md)
    binds them into the CPU report's ``report_data`` and every GPU's nonce, so a flipped flag
    fails the binding check of every report: the evidence is appraised first against the
    version-2 binding of the bundle's own flags, and passes on that alone. Evidence that does
    not affirm under it is appraised again against the version-1 binding (``protocol_label``;
    evidence from a broker or agent before version 2, or a broker run with ``--binding-v1``):
    there the flags are the relay's word, and the log key does not help: a broker colluding
    with the host can ask the agent for version 1 and log flipped flags. So version-1 evidence
    with GPUs is refused (``cc_state_unauthenticated``) unless the caller accepts the relay's
    word with ``trust_relayed_cc_state=True`` (for agents from before version 2). A refusal
    names the findings of whichever appraisal had fewer rejects (the evidence's own version:
    the other one fails the binding of every report).
    """
    ctx = context if context is not None else AppraisalContext()

    def check(bundle: KeyBundle, at: datetime) -> None:
        if not bundle.evidence:
            raise VerificationError(
                "the key bundle carries no evidence (a version-1 bundle): the enclave must "
                "publish its evidence for a client that does not trust the broker",
                reason="bundle_no_evidence",
            )
        try:
            evidence = load_bundle(bundle.evidence)
            key = bundle.public_key.encode()
            v2 = derive_session_binding(bundle.nonce, key, PROTOCOL_LABEL_V2, evidence.device_state)
            v1 = derive_session_binding(bundle.nonce, key, protocol_label, evidence.device_state)
        except InputError as exc:
            raise VerificationError(
                f"the bundle's evidence is malformed: {exc}", reason="evidence_malformed"
            ) from None
        devices, enclave = appraise_bundle(evidence, v2, policy, at, context=ctx)
        status = appraisal_status(devices, enclave)
        if status is not Status.AFFIRMING and v1 != v2:
            # Version-1 evidence (or evidence that fails either way): the flags are bound by
            # no report here, so they are only as good as the channel that brought them.
            devices1, enclave1 = appraise_bundle(evidence, v1, policy, at, context=ctx)
            status1 = appraisal_status(devices1, enclave1)
            if status1 is Status.AFFIRMING:
                _check_relayed_state(evidence, trust_relayed_cc_state)
                devices, enclave, status = devices1, enclave1, status1
            elif _rejects(devices1, enclave1) < _rejects(devices, enclave):
                devices, enclave, status = devices1, enclave1, status1
        if status is Status.AFFIRMING:
            if log_key is not None:
                verify_bundle_log_proof(
                    bundle, log_key, origin=log_origin, protocol_label=protocol_label
                )
            return
        rejects = [
            f"{f.device}: {f.field}"
            for f in (*enclave, *(f for d in devices for f in d.findings))
            if f.severity is Severity.REJECT
        ]
        named = "; ".join(rejects[:MAX_NAMED_FINDINGS])
        more = (
            f" (+{len(rejects) - MAX_NAMED_FINDINGS} more)"
            if len(rejects) > MAX_NAMED_FINDINGS
            else ""
        )
        raise VerificationError(
            f"the enclave's evidence appraises as {status.value} under this policy"
            + (f": {named}{more}" if named else ""),
            reason="evidence_not_affirming",
        )

    return check


def _rejects(devices: Sequence[DeviceAppraisal], enclave: Sequence[Finding]) -> int:
    return sum(
        f.severity is Severity.REJECT for f in (*enclave, *(f for d in devices for f in d.findings))
    )


def _check_relayed_state(evidence: EvidenceBundle, trust_relayed_cc_state: bool) -> None:
    """Refuse version-1 evidence with GPUs unless the caller takes the relay's word for its
    CC/DevTools flags (and its device count). The log key does not vouch for them: it shows
    only that the broker logged these bytes, and a broker colluding with the host can ask a
    current agent for version 1 and log flipped flags (docs/binding.md, "Downgrade")."""
    if not trust_relayed_cc_state and (evidence.gpus or evidence.switches):
        raise VerificationError(
            "the GPUs' CC mode and DevTools mode are in no signed report, and this evidence "
            "was made under binding version 1, which does not bind them: they are the word "
            "of the relay (and of the broker, which may have logged them flipped). Evidence "
            "from a current agent uses version 2; accept the relay's word explicitly only for "
            "an agent from before version 2",
            reason="cc_state_unauthenticated",
        )


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _safe_detail(text: str | None) -> str:
    """An unauthenticated status message, printable ASCII only and shortened."""
    allowed = set(string.ascii_letters + string.digits + " ()._,;:-'/")
    clean = "".join(c if c in allowed else "?" for c in (text or ""))
    return clean[:MAX_STATUS_DETAIL_CHARS]


def _unavailable(exc: grpc.aio.AioRpcError, what: str) -> EnclaveUnavailable:
    code = exc.code().name
    detail = _safe_detail(exc.details())
    suffix = f": {detail}" if detail else ""
    return EnclaveUnavailable(f"{what} failed with {code} (unauthenticated){suffix}", code=code)


def _refused_before_head(exc: grpc.aio.AioRpcError, sent_at: int) -> EnclaveUnavailable:
    """The typed error of a ``Generate`` that failed before the head (``sent_at``: the send time
    this client sealed into the request, named when the enclave refuses it)."""
    code = exc.code()
    prefix = f"Generate failed with {code.name} (unauthenticated)"
    if code is grpc.StatusCode.ALREADY_EXISTS:
        return RequestReplayRefused(
            f"{prefix}: the enclave had already received this request, which this client sent "
            "once: it was replayed or duplicated on the way (by the relay), and that copy got "
            "the only answer, which nobody else can read; retrying sends a new request",
            code=code.name,
        )
    if code is grpc.StatusCode.OUT_OF_RANGE:
        stamp = datetime.fromtimestamp(sent_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return ClientClockRefused(
            f"{prefix}: the enclave refused the request's send time ({stamp}, this machine's "
            "clock) as outside its window; check this machine's clock, or the request was held "
            "back on the way",
            code=code.name,
        )
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        detail = _safe_detail(exc.details())
        return EnclaveBusy(
            f"{prefix}: the enclave is busy{f' ({detail})' if detail else ''}; retry later",
            code=code.name,
        )
    return _unavailable(exc, "Generate")


def channel_options() -> list[tuple[str, int]]:
    """Message-size bounds on the client channel (the enclave's limits, mirrored)."""
    return [
        ("grpc.max_receive_message_length", MAX_RESPONSE_MESSAGE),
        ("grpc.max_send_message_length", MAX_GENERATE_REQUEST_MESSAGE),
    ]


class EnclaveClient:
    """An attested, end-to-end encrypted client of one enclave (``grpc.aio``).

    ``bundle_check`` is either the broker's pinned EAR verification key or a complete
    :data:`KeyAttestationCheck`. There is deliberately no way to skip the check. ``bundle``
    pins the bundle bytes (fetched out of band) instead of asking the enclave for them; it is
    verified all the same. Use as ``async with EnclaveClient(...) as client:``.
    """

    def __init__(
        self,
        target: str,
        *,
        bundle_check: KeyAttestationCheck | VerifyingKey,
        bundle: bytes | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        record_size: int = DEFAULT_RECORD_SIZE,
        pad_block: int = DEFAULT_REQUEST_PAD_BLOCK,
        timeout: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], datetime] = _utcnow,
        retry_on_new_key: bool = False,
    ) -> None:
        if not 0 < timeout <= MAX_TIMEOUT_S:
            raise InputError(f"timeout must be in (0, {MAX_TIMEOUT_S}] seconds")
        self.target = target
        self._check: KeyAttestationCheck = (
            bundle_check if callable(bundle_check) else broker_ear_check(bundle_check)
        )
        # A pinned bundle is decoded now: malformed bytes from the caller are bad input.
        self._pinned = KeyBundle.decode(bundle) if bundle is not None else None
        self._fetched: KeyBundle | None = None
        self._credentials = credentials
        self._record_size = record_size
        self._pad_block = pad_block
        self._timeout = timeout
        self._clock = clock
        self._retry_on_new_key = retry_on_new_key
        self._channel: grpc.aio.Channel | None = None

    async def __aenter__(self) -> EnclaveClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel (idempotent)."""
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close(None)

    def _get_channel(self) -> grpc.aio.Channel:
        # Made lazily: a grpc.aio channel belongs to the event loop that first uses it.
        if self._channel is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.target, options=channel_options())
            else:
                self._channel = grpc.aio.secure_channel(
                    self.target, self._credentials, options=channel_options()
                )
        return self._channel

    async def _fetch_bundle(self) -> KeyBundle:
        call = self._get_channel().unary_unary(
            GET_KEY_BUNDLE_METHOD,
            request_serializer=enclave_pb2.GetKeyBundleRequest.SerializeToString,
            response_deserializer=enclave_pb2.KeyBundle.FromString,
        )
        try:
            reply: enclave_pb2.KeyBundle = await call(
                enclave_pb2.GetKeyBundleRequest(), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise _unavailable(exc, "GetKeyBundle") from None
        if reply is None:  # not protobuf: grpc logs the decode error and hands us None
            raise BundleError(
                "the enclave's key bundle reply is not a KeyBundle message",
                reason="bundle_malformed",
            )
        try:
            return KeyBundle.decode(reply.bundle)
        except ParseError as exc:
            raise BundleError(
                f"the enclave's key bundle is malformed: {exc}", reason="bundle_malformed"
            ) from None

    async def key_bundle(self) -> VerifiedKeyBundle:
        """The enclave's bundle, verified as of ``clock()`` (re-verified on every call, so an
        expired attestation result stops new requests)."""
        bundle = self._pinned
        if bundle is None:
            if self._fetched is None:
                self._fetched = await self._fetch_bundle()
            bundle = self._fetched
        return verify_bundle(bundle, check=self._check, at=self._clock())

    async def _attempt_bundle(self, sealed_to: bytes | None) -> VerifiedKeyBundle:
        """The verified bundle for one attempt of a generation. For the retry after a stale-key
        refusal (``sealed_to``: the key the first request was sealed to) it must name another
        key, or :class:`KeyRotationUnconfirmed`: the prompt is sealed again only to a key the
        enclave really rotated to."""
        verified = await self.key_bundle()
        if sealed_to is not None and verified.public_key.encode() == sealed_to:
            raise KeyRotationUnconfirmed(
                "Generate failed with FAILED_PRECONDITION (unauthenticated): the enclave's key "
                "is said to be stale, but the enclave still offers the same attested key; the "
                "prompt is not sent again (a relay that forged the status would get a second "
                "answer)",
                code=grpc.StatusCode.FAILED_PRECONDITION.name,
            )
        return verified

    def _start(
        self, verified: VerifiedKeyBundle, prompt: str, params: GenerationParams | None
    ) -> tuple[ClientStream, grpc.aio.UnaryStreamCall[Any, Any], float]:
        """Seal the request to the verified key, stamped with ``clock()`` (whole POSIX seconds)
        as its send time, and start the call; returns the stream, the call and the local
        deadline."""
        stream = ClientStream.start(
            verified,
            prompt,
            sent_at=math.floor(self._clock().timestamp()),
            params=params,
            record_size=self._record_size,
            pad_block=self._pad_block,
        )
        deadline = asyncio.get_running_loop().time() + self._timeout
        call = self._get_channel().unary_stream(
            GENERATE_METHOD,
            request_serializer=enclave_pb2.GenerateRequest.SerializeToString,
            response_deserializer=enclave_pb2.StreamRecord.FromString,
        )(enclave_pb2.GenerateRequest(sealed_request=stream.request), timeout=self._timeout)
        return stream, call, deadline

    def _failed(
        self,
        exc: grpc.aio.AioRpcError,
        stream: ClientStream,
        got_head: bool,
        deadline: float,
        attempt: int,
    ) -> bool:
        """The call failed. Before the head: if the enclave says our key is stale (it restarted
        with a new key), drop the cached bundle and raise :class:`EnclaveKeyChanged`, or, with
        ``retry_on_new_key``, retry once (True); else raise :class:`EnclaveUnavailable` (or the
        subclass for a replay guard's refusal). After the head: only the caller's own deadline
        gets its own error; anything else returns False and is left to ``finish()``, which
        refuses a stream without its final record."""
        if not got_head:
            if (
                exc.code() is grpc.StatusCode.FAILED_PRECONDITION
                and self._pinned is None
                and attempt == 1
            ):
                self._fetched = None
                if self._retry_on_new_key:
                    return True
                raise EnclaveKeyChanged(
                    "Generate failed with FAILED_PRECONDITION (unauthenticated): the enclave "
                    "says the request was sealed to a key it no longer holds (it restarted?). "
                    "The prompt was not sent again; the next call fetches and verifies the "
                    "enclave's key bundle anew (retry_on_new_key=True retries at once)",
                    code=grpc.StatusCode.FAILED_PRECONDITION.name,
                ) from None
            raise _refused_before_head(exc, stream.sent_at) from None
        if (
            exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            and asyncio.get_running_loop().time() >= deadline
        ):
            raise GenerationTimeout(
                "the deadline passed before the stream ended; the output is incomplete",
                code=exc.code().name,
            ) from None
        return False

    @staticmethod
    def _finish(stream: ClientStream) -> None:
        outcome = stream.finish()  # StreamError unless the head and the final record arrived
        if isinstance(outcome, StreamAborted):
            raise GenerationAborted(outcome.reason)

    async def generate_tokens(
        self, prompt: str, *, params: GenerationParams | None = None
    ) -> AsyncIterator[Token]:
        """Raw tokens (bytes, as the engine produced them) of one encrypted generation.

        Ends normally only after the enclave's authenticated clean end; raises
        :class:`GenerationAborted` after the last token of an aborted stream.
        """
        sealed_to: bytes | None = None
        for attempt in (1, 2):
            verified = await self._attempt_bundle(sealed_to)
            sealed_to = verified.public_key.encode()
            stream, call, deadline = self._start(verified, prompt, params)
            got_head = False
            try:
                async for message in call:
                    if message is None:
                        # Not a StreamRecord: grpc's deserializer logs the decode error and
                        # hands None on. Only the relay can cause that, so it is a manipulated
                        # stream (the opaque StreamError), not an AttributeError from the SDK.
                        raise StreamError()
                    if not got_head:
                        stream.open_head(message.record)
                        got_head = True
                        continue
                    data = stream.open_token(message.record)
                    if data is not None:
                        yield Token(data)
            except grpc.aio.AioRpcError as exc:
                if self._failed(exc, stream, got_head, deadline, attempt):
                    continue
            finally:
                call.cancel()  # no-op after a clean end; stops the enclave if we broke off
            self._finish(stream)
            return

    async def generate(
        self, prompt: str, *, params: GenerationParams | None = None
    ) -> AsyncIterator[str]:
        """Text of one encrypted generation, as it arrives (see :meth:`generate_tokens`).

        The same loop as :meth:`generate_tokens` with the decoding inline rather than behind a
        second generator level, and records opened by ``open_token`` (token bytes, no event
        objects): it runs once per token, between two gRPC reads."""
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        sealed_to: bytes | None = None
        for attempt in (1, 2):
            verified = await self._attempt_bundle(sealed_to)
            sealed_to = verified.public_key.encode()
            stream, call, deadline = self._start(verified, prompt, params)
            got_head = False
            try:
                async for message in call:
                    if message is None:  # not a StreamRecord (see generate_tokens)
                        raise StreamError()
                    if not got_head:
                        stream.open_head(message.record)
                        got_head = True
                        continue
                    data = stream.open_token(message.record)
                    if data is not None:
                        text = decoder.decode(data)
                        if text:
                            yield text
            except grpc.aio.AioRpcError as exc:
                if self._failed(exc, stream, got_head, deadline, attempt):
                    continue
            except UnicodeDecodeError:
                raise TokenDecodeError() from None
            finally:
                call.cancel()
            self._finish(stream)
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:  # the stream ended inside a character
                raise TokenDecodeError() from None
            return

    async def generate_text(self, prompt: str, *, params: GenerationParams | None = None) -> str:
        """The whole answer as one string (clean end only)."""
        return "".join([piece async for piece in self.generate(prompt, params=params)])


class SyncEnclaveClient:
    """Blocking wrapper of :class:`EnclaveClient` for scripts and notebooks.

    Runs a private event loop in a daemon thread (``grpc.aio`` objects belong to one loop);
    ``generate`` returns a plain iterator. Close it (or use ``with``) to stop the thread.
    """

    def __init__(self, target: str, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="lessee-client", daemon=True
        )
        self._thread.start()
        self._client = EnclaveClient(target, **kwargs)

    def _call(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result()

    def __enter__(self) -> SyncEnclaveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def key_bundle(self) -> VerifiedKeyBundle:
        result: VerifiedKeyBundle = self._call(self._client.key_bundle())
        return result

    def generate(self, prompt: str, *, params: GenerationParams | None = None) -> Iterator[str]:
        """Text pieces as they arrive; same errors as :meth:`EnclaveClient.generate`."""
        agen = self._client.generate(prompt, params=params)
        try:
            while True:
                try:
                    piece: str = self._call(agen.__anext__())
                except StopAsyncIteration:
                    return
                yield piece
        finally:
            if self._loop.is_running():
                self._call(_aclose(agen))

    def generate_text(self, prompt: str, *, params: GenerationParams | None = None) -> str:
        return "".join(self.generate(prompt, params=params))

    def close(self) -> None:
        """Close the channel and stop the loop thread (idempotent)."""
        if not self._loop.is_running():
            return
        self._call(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


async def _aclose(agen: AsyncIterator[str]) -> None:
    aclose = getattr(agen, "aclose", None)
    if aclose is not None:
        await aclose()
