"""``lessee audit replay``: re-run every logged decision offline and compare the verdicts.

``audit verify`` proves the log was not rewritten; it says nothing about whether the decisions
*in* it were right. Replay closes that gap: for every entry it takes the archived bytes (the
policy document, the evidence bundle, the broker's collateral), re-derives what the broker
should have derived, re-runs parse -> verify -> appraise **as of the entry's logged time**, and
compares the result with the signed result the broker logged. It trusts nothing but the log's
key, the verifier's (broker's) result key, the pinned vendor roots, and roots the auditor hands
in that the logged policy names by digest. No network: collateral the log did not archive is
collateral the replay does not have, and the verdict will show it.

Per entry (each failure is a ``Finding`` naming the entry; the replay keeps going):

1. **Blobs.** The policy (and for attest entries the evidence and collateral) are read from the
   bundle and used only if their bytes hash to the entry's reference (``replay_blob_unusable``
   otherwise; ``audit verify`` reports the blob itself as missing or replaced).
2. **Policy.** The document loads (``policy_invalid``) and its digest is the EAR's
   ``ear.lessee.policy-digest`` (``policy_digest_mismatch``). A version-2 release names the
   sealed model it released (``model_version``, ``manifest_sha256``): if the logged policy
   pins manifests (``model_manifest_digests``), the logged manifest is one of them
   (``release_manifest_not_pinned``; the broker's ``manifest_pin`` rule). A version-1 release
   does not log its manifest, so for it the pin is not decidable and not checked; a version-1
   release or refusal logged after a version-2 one is itself a finding
   (``entry_version_downgrade``, step 6): a broker that writes version 2 does not go back.
3. **Result.** The logged EAR verifies with the pinned verifier key as of the logged time
   (``ear_invalid`` with the reason; for a release or a refusal an expired result still yields
   its claims, and a release after its ``exp`` is ``release_after_expiry``); its ``eat_nonce`` is the logged nonce (``nonce_mismatch``); for
   an attest entry its ``iat`` is the logged time, to the second (``ear_time_mismatch``); the
   token's own status (the worst of its submodules) is not better than the result with its
   enclave-level findings (``ear_status_understated``: a broker from before the ``enclave``
   submodule).
4. **Binding.** The binding derived from the logged nonce and the EAR's enclave key equals the
   logged binding (``binding_mismatch``); the recomputed binding is what the appraisal uses.
   Version 2 (docs/binding.md): a result whose ``ear.lessee.binding`` claim names a version-2
   label and device state is derived with them (a malformed claim is ``binding_mismatch``),
   and for an attest entry the archived evidence's own CC/DevTools flags and device counts must
   be that state (``binding_mismatch``), so the appraisal checks the reports against the state
   the logged evidence carries. A result without the claim is version 1, derived under
   ``--protocol-label`` (default ``lessee/v1/key-release``: the log does not record labels).
5. **Appraisal** (attest entries). One ``evidence-bundle`` blob (``evidence_unusable``) that
   parses (``evidence_malformed``); collateral ``broker-rim-0..n-1`` as the broker's RIMs
   (``collateral_unknown`` for any other role); then the composite appraisal with the logged
   policy at the logged time, and ``verdict_mismatch`` unless the verdicts are *equal*:

   * the overall status is equal: the worst of every submodule's ``ear.status`` and of the
     enclave-level findings (``reject`` -> contraindicated, otherwise warning) -- the status
     the broker stored and ``release_key`` acted on;
   * the set of submodule names is equal;
   * for each submodule: ``ear.status``, ``ear.trustworthiness-vector``,
     ``ear.appraisal-policy-id`` and every claim are equal after a JSON round trip, and the
     findings (``ear.lessee.findings``) are equal as multisets of
     ``(device, field, expected, actual, severity)``;
   * the enclave-level findings (the EAR's top-level ``ear.lessee.findings``) are equal as
     multisets of the same tuple.

   A finding's ``detail`` is free text for people (exception messages, hints) and is *not*
   compared: a rewording between verifier builds does not change a verdict. Everything that
   does change a verdict -- which check failed, on which device, with which values, and how
   badly -- is compared.

Across the log (in log order):

6. **Releases.** A release entry names a result (the EAR's ``jti``). There must be an earlier
   attest entry with that result (``release_without_attest``) whose logged verdict was
   affirming (``release_not_affirming``) and whose recomputed verdict is affirming too
   (``release_verdict_not_reproduced``); the release carries the very token that entry logged
   (``release_result_differs``), for the same enclave key -- the release's recipient key digest
   is SHA-256 of the EAR's enclave key (``release_key_mismatch``) --, the same model id
   (``release_model_mismatch``), nonce (``release_nonce_mismatch``) and binding
   (``release_binding_mismatch``), not before the attest entry (``release_before_attest``) and
   no later than the result's ``exp`` (``release_after_expiry``: strict, the broker's own clock
   wrote both times). At most one release per result (``release_repeated``).
7. **Nonces and results.** No nonce appears in two attest entries (``nonce_reused``) and no
   result id is issued twice (``result_id_reused``).
8. **Refusals** (``release_refused``; never counted as releases). The refused result was issued
   by an earlier attest entry (``refusal_without_attest``) with the same token, key, nonce and
   binding, not before it (``refusal_result_differs``, ``refusal_key_mismatch``, ...); at most
   one refusal per (result, reason) (``refusal_repeated``); and the reason agrees with the log
   where that is decidable offline (``refusal_reason_inconsistent``, see
   ``_reason_disagreements``; ``manifest_pin`` is decidable for version-2 refusals only, which
   log the manifest the broker looked at). A release of a result refused earlier for a reason
   that cannot change is ``release_after_refusal``.

Emulated roots: a policy may trust extra roots by SHA-256 (``roots.extra_trusted_sha256``). The
broker archives those it used (``trust-root-<role>-<n>`` collateral); the auditor may supply
more candidate certificates. Either is used for an entry only if that entry's logged policy
lists its SHA-256. Listed roots that are neither archived nor supplied are recorded per entry
and named in a ``verdict_mismatch`` message.

Parallelism: entries are independent until step 6, so steps 1-5 run in a process pool (each
worker keeps its own verifier caches) and steps 6-7 run afterwards in the parent. The pool
starts in the background while the parent replays the first entries itself; once a worker is
up, the rest go to the pool. A log the parent finishes first gives the pool no work (closing it
still waits until its workers are up and stopped); a log of one chunk starts no pool. The same
per-entry code runs in-process when ``workers == 1``; results are identical either way.

Work is done once where its result cannot differ, and no check is skipped: blobs ``audit
verify`` read and found matching are handed over rather than read and hashed again; policies and
archived roots are parsed once per digest; one appraisal context per (policy, collateral) set
shares the verifier caches the way the broker's long-lived context does. Evidence is parsed for
every entry: real evidence never repeats, so a cache of it would only flatter a benchmark. A
verdict is first compared where it is cheapest: if both sides are the same JSON values, node for
node and type for type (``same_verdict``), the verdicts are equal and neither side is encoded;
any other pair gets the full comparison above.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import multiprocessing
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding

from agent.audit.bundle import Bundle
from agent.audit.pool import BackgroundPool
from agent.audit.verify import (
    MAX_FINDINGS_PER_CODE,
    AuditResult,
    BlobKeeper,
    Finding,
    verify_bundle,
)
from attest.appraise.common import ENCLAVE_SUBMODULE, DeviceAppraisal, result_submodules
from attest.appraise.composite import AppraisalContext, appraise_bundle
from attest.binding import (
    BINDING_CLAIM,
    DEFAULT_PROTOCOL_LABEL,
    DeviceState,
    SessionBinding,
    derive_binding,
    derive_session_binding,
    parse_binding_claim,
)
from attest.bundle import EvidenceBundle, load_bundle
from attest.ear import (
    MAX_CLOCK_SKEW_SECONDS,
    MODEL_ID_CLAIM,
    AttestationResult,
    Status,
    VerifyingKey,
    verify_ear,
)
from attest.errors import InputError, LesseeError, ParseError, VerificationError
from attest.findings import Finding as AppraisalFinding
from attest.log.entry import MAX_BLOB_SIZE, EntryKind, LogEntry, RefusalReason
from attest.log.note import NoteVerifier
from attest.policy import Policy, load_policy
from attest.snp.report import Product, SigningKey
from attest.snp.verify import CertRole, classify, held_crl_name
from attest.timeutil import require_aware
from attest.x509chain import load_pem_chain

_log = logging.getLogger(__name__)

#: Version of the JSON report (``ReplayReport.to_json``); bump on any incompatible change.
#: Fields added to it are optional for a reader (version 1 still): each entry's
#: ``model_version`` and ``manifest_sha256`` are null for attest and version-1 entries.
REPORT_VERSION = 1
#: The role the broker gives the evidence bundle, and the prefix of its own RIMs.
EVIDENCE_ROLE = "evidence-bundle"
EVIDENCE_MEDIA_TYPE = "application/json"
RIM_ROLE_PREFIX = "broker-rim-"
#: Archived trust roots (agent.broker.appraiser): ``trust-root-<role>-<n>``.
TRUST_ROOT_ROLE_PREFIX = "trust-root-"
#: AMD CRLs the broker held (agent.broker.appraiser): ``broker-amd-crl-<kind>-<product>``, in
#: lower case as every log role (``broker-amd-crl-vlek-genoa``).
AMD_CRL_ROLE_PREFIX = "broker-amd-crl-"
_HELD_CRL_ROLES = {
    AMD_CRL_ROLE_PREFIX + held_crl_name(kind, product).lower(): (kind, product)
    for kind in (SigningKey.VCEK, SigningKey.VLEK)
    for product in Product
}
#: Claim names the broker puts in the EAR (see ``agent.broker.service``; the model id's is
#: ``attest.ear.MODEL_ID_CLAIM``).
FINDINGS_CLAIM = "ear.lessee.findings"
#: Trust-anchor roles a candidate root can fill (the first two as in ``TrustAnchors``).
ROOT_ROLES = ("nvidia_device_root", "nvidia_rim_root", "amd_ark")
#: Most candidate root certificates: emulation needs three; this only bounds a silly input.
MAX_ROOT_CANDIDATES = 64
#: Largest candidate file (a PEM bundle of a few roots is a few kB).
MAX_CANDIDATE_FILE_BYTES = 1024 * 1024
#: Entries per task sent to a worker: an appraisal costs ~5 ms, so 16 entries amortise the
#: pickling and scheduling while keeping work balanced and the progress bar moving.
CHUNK_ENTRIES = 16
#: Chunks queued per worker beyond the one it runs: keeps workers busy while bounding the
#: archived blobs the parent holds in memory at once.
CHUNKS_AHEAD_PER_WORKER = 2
#: Replay in this process while the worker pool starts (``_run_parallel``). Off only in tests,
#: which need the workers to run a log far too small to outlast the pool's start.
BRIDGE_POOL_START = True
#: Start the worker pool only when the rest of the log, timed on the entries replayed so far,
#: would take longer than this here: starting a pool took ~0.4 s on the 2-core development
#: machine (the ``forkserver`` imports the verifier) and closing one waits for that start.
POOL_START_BREAK_EVEN_S = 0.5
#: Most worker processes, whatever ``--workers`` says (each holds its own caches).
MAX_WORKERS = 256
#: Longest message of one finding: a verdict difference over 8 GPUs stays readable.
MAX_MESSAGE_CHARS = 4000
#: Findings listed per entry in one ``verdict_mismatch`` message before "and N more".
MAX_DIFF_ITEMS = 8
#: Parsed policies kept per process: a log has a handful; this bounds a log with thousands.
MAX_CACHED_POLICIES = 64
#: Archived trust roots kept parsed, by role and digest (an installation has a handful).
MAX_CACHED_ROOTS = 64
#: Verified results kept by their exact token text: a release and a refusal carry the very
#: token their attest entry logged, usually a few entries later. Bounded by count; the token
#: strings are the decoded entries' own, which the replay holds anyway.
MAX_CACHED_RESULTS = 1024
#: Collateral and policy blobs repeat across entries (the broker's RIMs, one policy), so the
#: parent keeps the verified bytes of recent ones instead of re-reading and re-hashing them.
#: Evidence is per session (each report carries its session's nonce), so it is read, hashed and
#: parsed for every entry: a log that repeats evidence bytes is an attack or a benchmark, and
#: neither should make the replay look cheaper than it is on a real log.
#: Bounds: total bytes held, and size of one blob.
BLOB_CACHE_BYTES = 32 * 1024 * 1024
#: Blob bytes ``audit verify`` may hand to the replay (``BlobKeeper``) instead of the replay
#: reading and hashing them again: a log of ~1,500 one-GPU entries (~20 KiB of evidence each)
#: fits whole; past it, the rest is read again, as without a keeper.
KEPT_BLOB_BYTES = 32 * 1024 * 1024
MAX_CACHED_BLOB_BYTES = 1024 * 1024

_ARK_NAME = re.compile(r"(?:^|\s)ARK-(?:" + "|".join(p.value for p in Product) + r")$")

ReplayAppraise = Callable[
    [EvidenceBundle, SessionBinding, Policy, datetime, AppraisalContext],
    tuple[tuple[DeviceAppraisal, ...], tuple[AppraisalFinding, ...]],
]


def composite_appraise(
    bundle: EvidenceBundle,
    binding: SessionBinding,
    policy: Policy,
    at: datetime,
    context: AppraisalContext,
) -> tuple[tuple[DeviceAppraisal, ...], tuple[AppraisalFinding, ...]]:
    """The broker's appraisal (``agent.broker.appraiser.composite_appraiser``), as a function
    a worker process can be handed by reference."""
    return appraise_bundle(bundle, binding, policy, at, context=context)


# ---- trust-root candidates -------------------------------------------------------------------


@dataclass(frozen=True)
class RootCandidate:
    """A root certificate the auditor offers; used only where a logged policy lists it."""

    role: str
    der: bytes

    def __post_init__(self) -> None:
        if self.role not in ROOT_ROLES:
            raise InputError(f"unknown trust-root role {self.role!r}; use one of {ROOT_ROLES}")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()


def infer_root_role(cert: x509.Certificate) -> str:
    """Which trust anchor a root fills. AMD roots are named ``ARK-<product>`` (the emulation's
    ``LESSEE EMULATION ARK-Milan`` too); NVIDIA's RIM root says "RIM" in its common name
    ("NVIDIA CoRIM signing Root CA"); any other root is a device identity root. ``ROLE=FILE``
    on the command line overrides this guess."""
    try:
        role, _ = classify(cert)
    except InputError:
        role = None
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else ""
    if role is CertRole.ARK or _ARK_NAME.search(cn):
        return "amd_ark"
    return "nvidia_rim_root" if "RIM" in cn.upper() else "nvidia_device_root"


def load_root_candidates(data: bytes, *, role: str | None = None) -> tuple[RootCandidate, ...]:
    """Every certificate of a PEM file as a candidate (``role`` for all, or inferred each)."""
    if len(data) > MAX_CANDIDATE_FILE_BYTES:
        raise InputError(f"trust-root candidate file larger than {MAX_CANDIDATE_FILE_BYTES} bytes")
    certs = load_pem_chain(data, max_certs=MAX_ROOT_CANDIDATES)
    return tuple(
        RootCandidate(role or infer_root_role(c), c.public_bytes(Encoding.DER)) for c in certs
    )


def parse_candidate_arg(text: str) -> tuple[str | None, str]:
    """``ROLE=PATH`` or ``PATH`` (a path whose prefix before ``=`` is no role stays whole)."""
    role, sep, rest = text.partition("=")
    if sep and role in ROOT_ROLES:
        if not rest:
            raise InputError(f"{text!r}: no file after '{role}='")
        return role, rest
    return None, text


# ---- verdicts --------------------------------------------------------------------------------


#: One encoder for every canonical form (``json.dumps`` with options builds one per call).
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def _canonical(value: Any) -> str:
    """Canonical JSON text: sorted keys, no spaces. Tuples and lists spell the same, so a value
    parsed from the logged token and one computed now compare equal iff they mean the same."""
    return _ENCODER.encode(value)


_FINDING_FIELDS = ("device", "field", "expected", "actual", "severity")


def _finding_keys(raw: object) -> tuple[str, ...] | None:
    """Findings as sorted canonical ``[device, field, expected, actual, severity]``; None if
    ``raw`` is not a list of finding objects."""
    if not isinstance(raw, list | tuple):
        return None
    keys = []
    for item in raw:
        if not isinstance(item, dict) or not {"device", "field", "severity"} <= item.keys():
            return None
        keys.append(_canonical([item.get(k) for k in _FINDING_FIELDS]))
    return tuple(sorted(keys))


@dataclass(frozen=True)
class SubmoduleVerdict:
    """One submodule as the equality rule sees it (JSON values in canonical text)."""

    status: Status
    trust_vector: str
    policy_id: str | None
    claims: str
    findings: tuple[str, ...] | None  # None: not a list of finding objects

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> SubmoduleVerdict:
        policy_id = body.get("ear.appraisal-policy-id")
        try:
            status = Status(str(body.get("ear.status", "")))
        except ValueError:
            status = Status.NONE
        claims = {k: v for k, v in body.items() if k not in _SUBMODULE_KEYS}
        return cls(
            status,
            _canonical(body.get("ear.trustworthiness-vector", {})),
            policy_id if isinstance(policy_id, str) else _canonical(policy_id),
            _canonical(claims),
            _finding_keys(body.get(FINDINGS_CLAIM, [])),
        )


_SUBMODULE_KEYS = (
    "ear.status",
    "ear.trustworthiness-vector",
    "ear.appraisal-policy-id",
    FINDINGS_CLAIM,
)


def _finding_list_ok(raw: object) -> bool:
    return isinstance(raw, list | tuple) and all(
        isinstance(item, dict) and {"device", "field", "severity"} <= item.keys() for item in raw
    )


@dataclass(frozen=True)
class Verdict:
    """A verdict as the equality rule compares it (see the module docstring).

    Holds the submodules and enclave findings as JSON objects and, when first asked, one
    canonical text of the whole verdict: equal texts mean equal in every respect (the status
    is a function of the same content), so ``compare_verdicts`` is one string comparison for a
    reproduced verdict and only encodes per submodule and normalises (finding multisets
    without ``detail``) where the texts differ. One encoding per side, not one per submodule:
    the JSON encoder's per-call cost is most of what the comparison costs; and none at all
    where the two are the same JSON values node for node (``same_verdict``).
    """

    status: Status
    submods: Mapping[str, Mapping[str, Any]]
    enclave: tuple[Any, ...]

    @cached_property
    def text(self) -> str:
        return _canonical({"enclave": list(self.enclave), "submods": self.submods})

    @classmethod
    def build(cls, submods: Mapping[str, object], enclave_raw: object) -> Verdict | None:
        """From submodule JSON objects (EAR form) and the enclave-level findings list; None
        if they are not in lessee's form."""
        enclave = enclave_raw if enclave_raw is not None else []
        if not _finding_list_ok(enclave):
            return None
        assert isinstance(enclave, list | tuple)
        statuses = []
        bodies: dict[str, Mapping[str, Any]] = {}
        for name, body in submods.items():
            if not isinstance(body, Mapping):
                return None
            try:
                statuses.append(Status(str(body.get("ear.status", ""))))
            except ValueError:
                return None
            bodies[name] = body
        if any(f.get("severity") == "reject" for f in enclave):
            statuses.append(Status.CONTRAINDICATED)
        elif enclave:
            statuses.append(Status.WARNING)
        status = Status.worst(statuses) if statuses else Status.CONTRAINDICATED
        return cls(status, bodies, tuple(enclave))

    @classmethod
    def logged(cls, claims: AttestationResult) -> Verdict | None:
        return cls.build(
            {n: s.to_json() for n, s in claims.submods.items()}, claims.extra.get(FINDINGS_CLAIM)
        )

    @classmethod
    def recomputed(
        cls,
        devices: Sequence[DeviceAppraisal],
        findings: Sequence[AppraisalFinding],
        policy_digest: str,
    ) -> Verdict:
        """Our own verdict, in the form the broker signs (``agent.broker.service``): each
        device's ``submodule(policy digest)`` in EAR JSON form, and the enclave findings."""
        verdict = cls.build(
            {
                name: sub.to_json()
                for name, sub in result_submodules(devices, findings, policy_digest).items()
            },
            [f.to_json() for f in findings],
        )
        assert verdict is not None  # our own appraisal always has the right shape
        return verdict


#: Leaf types whose canonical JSON text follows from equality alone, given the same exact type.
_JSON_ATOMS = frozenset({str, int, bool, type(None)})


def same_json(a: object, b: object) -> bool:
    """Whether ``a`` and ``b`` certainly have the same canonical JSON text (``_canonical``).

    Python's ``==`` (in C, and quick) is nearly that question: the exceptions are values of
    different types that Python calls equal and JSON spells differently -- ``True`` and ``1``,
    ``1`` and ``1.0``, ``0.0`` and ``-0.0`` -- and ``==`` also looks past the difference
    between ``True`` and ``1`` as dict keys. So: ``==``, then one walk that requires the same
    exact type at every node and every key to be a ``str``, and a float's ``repr`` (the text
    JSON writes) to match. Equal values of the same exact ``str``, ``int``, ``bool`` or
    ``None`` type have one spelling; dicts, lists and tuples are equal and of the same type
    node for node; nothing else (a ``str`` or ``int`` subclass, a set, an object the encoder
    would ``str()``) is taken. False never means "different": a caller that needs the answer
    then compares canonical texts (``compare_verdicts``). Tested against ``_canonical``.
    """
    return a == b and _same_types(a, b)


def _same_types(a: object, b: object) -> bool:
    """``same_json`` once ``a == b`` is known (so keys match and lengths agree)."""
    t = type(a)
    if t is not type(b):
        return False
    if t is dict:
        assert isinstance(a, dict) and isinstance(b, dict)
        for k, v in a.items():
            if type(k) is not str:
                return False
            w = b[k]
            tv = type(v)
            if tv in _JSON_ATOMS:
                if type(w) is not tv:
                    return False
            elif not _same_types(v, w):
                return False
        return True
    if t is list or t is tuple:
        assert isinstance(a, list | tuple) and isinstance(b, list | tuple)
        for v, w in zip(a, b, strict=True):
            tv = type(v)
            if tv in _JSON_ATOMS:
                if type(w) is not tv:
                    return False
            elif not _same_types(v, w):
                return False
        return True
    if t in _JSON_ATOMS:
        return True
    return t is float and repr(a) == repr(b)


def same_verdict(logged: Verdict, ours: Verdict) -> bool:
    """Whether the verdicts are certainly equal, without encoding either: their submodules and
    enclave findings are ``same_json``, so their canonical texts are equal, and
    ``compare_verdicts`` would answer with nothing (the status is a function of the same
    content). The cheap road for every honest entry; anything else -- a reworded ``detail``,
    reordered findings, a logged ``1`` where the appraisal says ``true`` -- answers False, and
    ``compare_verdicts`` decides as before."""
    return same_json(ours.submods, logged.submods) and same_json(ours.enclave, logged.enclave)


def _short(key: str) -> str:
    device, name, expected, actual, severity = json.loads(key)
    return f"{device}.{name} ({severity}: expected {expected!r}, got {actual!r})"


def _multiset_diff(logged: tuple[str, ...], ours: tuple[str, ...]) -> tuple[list[str], list[str]]:
    a, b = Counter(logged), Counter(ours)
    return sorted((a - b).elements()), sorted((b - a).elements())


def _list(items: list[str]) -> str:
    shown = [_short(k) for k in items[:MAX_DIFF_ITEMS]]
    more = f" and {len(items) - MAX_DIFF_ITEMS} more" if len(items) > MAX_DIFF_ITEMS else ""
    return "[" + "; ".join(shown) + "]" + more


def _claim_keys_differing(a: str, b: str) -> list[str]:
    x, y = json.loads(a), json.loads(b)
    return sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))


def _findings_diff(where: str, a: tuple[str, ...] | None, b: tuple[str, ...] | None) -> list[str]:
    if a is None or b is None:
        return [f"{where} findings are not a list of finding objects"]
    lost, gained = _multiset_diff(a, b)
    out = []
    if lost:
        out.append(f"{where} findings only in the log {_list(lost)}")
    if gained:
        out.append(f"{where} findings only recomputed {_list(gained)}")
    return out


def compare_verdicts(logged: Verdict, ours: Verdict) -> list[str]:
    """Every difference, one phrase each; empty iff the verdicts are equal."""
    if logged.text == ours.text:
        return []
    out: list[str] = []
    if logged.status is not ours.status:
        out.append(f"overall status logged {logged.status.value}, recomputed {ours.status.value}")
    only_logged = sorted(set(logged.submods) - set(ours.submods))
    only_ours = sorted(set(ours.submods) - set(logged.submods))
    if only_logged or only_ours:
        out.append(f"submodules only logged {only_logged}, only recomputed {only_ours}")
    for name in sorted(set(logged.submods) & set(ours.submods)):
        if _canonical(logged.submods[name]) == _canonical(ours.submods[name]):
            continue
        a, b = SubmoduleVerdict.of(logged.submods[name]), SubmoduleVerdict.of(ours.submods[name])
        if a.status is not b.status:
            out.append(f"{name} status logged {a.status.value}, recomputed {b.status.value}")
        if a.trust_vector != b.trust_vector:
            out.append(f"{name} trust vector logged {a.trust_vector}, recomputed {b.trust_vector}")
        if a.policy_id != b.policy_id:
            out.append(f"{name} policy id logged {a.policy_id}, recomputed {b.policy_id}")
        if a.claims != b.claims:
            out.append(f"{name} claims differ: {_claim_keys_differing(a.claims, b.claims)}")
        out.extend(_findings_diff(name, a.findings, b.findings))
    if _canonical(list(logged.enclave)) != _canonical(list(ours.enclave)):
        out.extend(
            _findings_diff(
                "enclave", _finding_keys(list(logged.enclave)), _finding_keys(list(ours.enclave))
            )
        )
    return out


# ---- one entry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryReplay:
    """What replaying one entry established; the cross-entry checks work from these alone."""

    index: int
    kind: EntryKind
    time: datetime
    nonce: bytes
    binding: bytes
    findings: tuple[Finding, ...] = ()
    #: From the verified EAR (None where it did not verify).
    result_id: str | None = None
    #: SHA-256 of what the issuer signed (the JWS signing input, ``header.payload``), not of
    #: the whole token: an ES256 signature has a twin, (r, n - s), that verifies as well, so
    #: anyone holding a token can spell it a second way; releasing on the twin is releasing
    #: on the same result.
    result_sha256: bytes | None = None
    enclave_key_sha256: bytes | None = None
    model_id: str | None = None
    expires_at: int | None = None
    logged_status: Status | None = None
    #: Attest entries the replay could appraise.
    recomputed_status: Status | None = None
    verdict_equal: bool | None = None
    #: SHA-256 of roots the policy trusts that no candidate supplied.
    roots_unavailable: tuple[str, ...] = ()
    #: Release and refusal entries: the logged recipient key digest.
    recipient_key_sha256: bytes | None = None
    #: Refusal entries: the logged reason.
    reason: RefusalReason | None = None
    #: Release and refusal entries: the model id the result itself names.
    result_model_id: str | None = None
    #: Whether the result's policy digest is the logged policy's (None: not established).
    policy_matches: bool | None = None
    #: Version-2 release and refusal entries: the logged registered model version and sealed
    #: manifest digest (None on attest and version-1 entries).
    model_version: int | None = None
    manifest_sha256: bytes | None = None
    #: Whether the logged policy admits the logged manifest: True if it pins no manifests or
    #: pins this one, False if it pins others only (the broker's ``manifest_pin``), None where
    #: not decidable (attest and version-1 entries, or the policy did not load).
    manifest_admitted: bool | None = None
    #: The entry's encoding version (``attest.log.entry``): 2 for releases and refusals of a
    #: current broker, 1 for attest entries and for those of brokers from before version 2.
    entry_version: int = 1

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "kind": self.kind.value,
            "entry_version": self.entry_version,
            "reason": self.reason.value if self.reason is not None else None,
            "time": self.time.isoformat(),
            "result_id": self.result_id,
            "model_id": self.model_id,
            "model_version": self.model_version,
            "manifest_sha256": self.manifest_sha256.hex() if self.manifest_sha256 else None,
            "logged_status": self.logged_status.value if self.logged_status else None,
            "recomputed_status": self.recomputed_status.value if self.recomputed_status else None,
            "verdict_equal": self.verdict_equal,
            "roots_unavailable": list(self.roots_unavailable),
            "findings": len(self.findings),
        }


@dataclass(frozen=True)
class EntryInput:
    """One entry and the archived blobs whose bytes matched their references."""

    index: int
    entry: LogEntry
    blobs: Mapping[bytes, bytes]


@dataclass(frozen=True)
class ReplayConfig:
    """Everything a worker needs, in picklable form."""

    verifier_key_spki: bytes
    candidates: tuple[RootCandidate, ...] = ()
    protocol_label: str = DEFAULT_PROTOCOL_LABEL
    appraise: ReplayAppraise = composite_appraise


def _spki(key: VerifyingKey) -> bytes:
    return key.public_bytes(Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_spki(der: bytes) -> VerifyingKey:
    key = serialization.load_der_public_key(der)
    if isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        return key
    raise InputError("the verifier key must be P-256 or Ed25519")


class _Stop(Exception):  # noqa: N818 (control flow inside one entry's replay, never escapes)
    """Stop replaying this entry: the findings so far say why the rest cannot be checked."""


class EntryReplayer:
    """Replays single entries (steps 1-5); one per process, caches shared across entries."""

    def __init__(self, config: ReplayConfig) -> None:
        self.config = config
        self.key = _load_spki(config.verifier_key_spki)
        self.candidates = [
            (c, x509.load_der_x509_certificate(c.der), c.sha256) for c in config.candidates
        ]
        # The broker keeps one long-lived context; the replay shares the verifier caches across
        # entries the same way. They are keyed by exact bytes and validity windows, so a hit is
        # exactly what a fresh verification at that entry's time would give.
        self._shared = AppraisalContext()
        self._policies: dict[bytes, tuple[Policy, str]] = {}
        self._roots: dict[tuple[str, bytes], tuple[RootCandidate, x509.Certificate, str]] = {}
        self._results: dict[str, AttestationResult] = {}

    def _verify_result(self, token: str, at: datetime, *, allow_expired: bool) -> AttestationResult:
        """``verify_ear(token, self.key, at=at, allow_expired=allow_expired)``, remembered by
        the exact token text. Every check of ``verify_ear`` but two is a function of the token
        and the pinned key alone; the two that depend on ``at`` (issued in the future, expired
        unless ``allow_expired``) are made again on every hit, and a hit that fails one of them
        goes through ``verify_ear`` itself, which raises its own error. Only tokens that
        verified are kept; any other text, a one-character edit included, is verified afresh.
        Saves the whole verification (~0.18 ms with 1 GPU) for every release and refusal whose
        attest entry this process replayed."""
        hit = self._results.get(token)
        if hit is not None:
            now, exp = int(require_aware(at).timestamp()), hit.expires_at
            if hit.issued_at <= now + MAX_CLOCK_SKEW_SECONDS and (
                allow_expired or exp is None or now <= exp + MAX_CLOCK_SKEW_SECONDS
            ):
                return hit
        claims = verify_ear(token, self.key, at=at, allow_expired=allow_expired)
        if len(self._results) >= MAX_CACHED_RESULTS:
            self._results.clear()
        self._results[token] = claims
        return claims

    def _policy(self, sha256: bytes, data: bytes) -> tuple[Policy, str]:
        """The parsed policy and its digest (``Policy.digest`` re-serialises; done once)."""
        hit = self._policies.get(sha256)
        if hit is None:
            policy = load_policy(data)
            if len(self._policies) >= MAX_CACHED_POLICIES:
                self._policies.clear()
            hit = self._policies[sha256] = (policy, policy.digest)
        return hit

    def replay(self, item: EntryInput) -> EntryReplay:
        findings: list[Finding] = []
        facts: dict[str, Any] = {}
        try:
            self._replay(item, findings, facts)
        except _Stop:
            pass
        except LesseeError as exc:  # a typed failure not anticipated above: still named
            findings.append(Finding("replay_failed", exc.diagnostics(), item.index))
        except Exception as exc:  # a verifier bug must not stop the audit of every other entry
            findings.append(
                Finding("replay_error", f"internal error {type(exc).__name__}", item.index)
            )
        e = item.entry
        return EntryReplay(
            index=item.index,
            kind=e.kind,
            time=e.time,
            nonce=e.nonce,
            binding=e.binding,
            findings=tuple(findings),
            recipient_key_sha256=e.recipient_key_sha256,
            reason=e.reason,
            model_version=e.model_version,
            manifest_sha256=e.manifest_sha256,
            entry_version=e.version,
            **facts,
        )

    def _replay(self, item: EntryInput, findings: list[Finding], facts: dict[str, Any]) -> None:
        e, idx = item.entry, item.index

        def add(code: str, message: str) -> None:
            findings.append(Finding(code, message[:MAX_MESSAGE_CHARS], idx))

        def blob(role: str, sha256: bytes) -> bytes:
            data = item.blobs.get(sha256)
            if data is None:
                add("replay_blob_unusable", f"{role}: archived bytes missing or not {sha256.hex()}")
                raise _Stop
            return data

        # 1-2. The logged policy document.
        policy_bytes = blob("policy", e.policy.sha256)
        try:
            policy, policy_digest = self._policy(e.policy.sha256, policy_bytes)
        except InputError as exc:
            add("policy_invalid", f"logged policy does not load: {exc}")
            raise _Stop from None
        if e.manifest_sha256 is not None:  # version 2: the pin is decidable
            pinned = policy.model_manifest_digests
            admitted = not pinned or e.manifest_sha256.hex() in pinned
            facts["manifest_admitted"] = admitted
            if e.kind is EntryKind.RELEASE and not admitted:
                add(
                    "release_manifest_not_pinned",
                    f"released model version {e.model_version} with manifest "
                    f"{e.manifest_sha256.hex()}, which the logged policy's "
                    f"model_manifest_digests ({len(pinned)} pinned) do not list",
                )

        # 3. The logged result, with the pinned key, as of the logged time. For a release or
        # a refusal an expired result still yields its claims (its signature is checked
        # first): a late release is a finding of its own, and must still be cross-checked; a
        # refusal for expiry carries an expired result by nature.
        release_like = e.kind is not EntryKind.ATTEST
        try:
            claims = self._verify_result(e.result, e.time, allow_expired=release_like)
        except VerificationError as exc:
            add("ear_invalid", f"{getattr(exc, 'reason', 'verification_failed')}: {exc}")
            raise _Stop from None
        except ParseError as exc:
            add("ear_malformed", str(exc))
            raise _Stop from None
        logged_at = int(e.time.timestamp())
        if (
            e.kind is EntryKind.RELEASE
            and claims.expires_at is not None
            and logged_at > claims.expires_at
        ):
            add(
                "release_after_expiry",
                f"released at {logged_at}, the result expired at {claims.expires_at}",
            )
        enclave_key = claims.enclave_key or b""
        facts.update(
            result_id=claims.result_id,
            result_sha256=hashlib.sha256(e.result.rsplit(".", 1)[0].encode("ascii")).digest(),
            enclave_key_sha256=hashlib.sha256(enclave_key).digest(),
            expires_at=claims.expires_at,
            model_id=(
                e.model_id if release_like else _str_or_none(claims.extra.get(MODEL_ID_CLAIM))
            ),
        )
        if release_like:
            # The model the result was issued for, to judge a ``model_mismatch`` refusal.
            facts["result_model_id"] = _str_or_none(claims.extra.get(MODEL_ID_CLAIM))
        logged = Verdict.logged(claims)
        if logged is None:
            add("ear_malformed", "the result's submodules or findings are not in lessee's form")
            raise _Stop
        facts["logged_status"] = logged.status
        signed = claims.status  # what a relying party that reads only the token is told
        if Status.worst([signed, logged.status]) is not signed:
            # A broker from before the ``enclave`` submodule: findings about the enclave as a
            # whole made the decision worse than every device's submodule, and the token said
            # the better status (the agent and the client SDK read only that).
            add(
                "ear_status_understated",
                f"the token's submodules say {signed.value}, but with its enclave-level findings "
                f"the result is {logged.status.value}",
            )
        facts["policy_matches"] = claims.policy_digest == policy_digest
        if claims.policy_digest != policy_digest and e.kind is not EntryKind.RELEASE_REFUSED:
            # A refusal logs the model's policy at the time, which differs from the result's
            # for ``policy_changed`` (and may for reasons checked before it): the cross-checks
            # judge ``policy_matches`` against the logged reason instead.
            add(
                "policy_digest_mismatch",
                f"result names policy {claims.policy_digest}, logged policy is {policy_digest}",
            )
        if claims.nonce != e.nonce:
            add("nonce_mismatch", "the result's eat_nonce is not the logged nonce")
        if e.kind is EntryKind.ATTEST and claims.issued_at != int(e.time.timestamp()):
            add(
                "ear_time_mismatch",
                f"result issued at {claims.issued_at}, entry logged at {int(e.time.timestamp())}",
            )
        if release_like and e.recipient_key_sha256 != facts["enclave_key_sha256"]:
            add(
                f"{_prefix(e.kind)}_key_mismatch",
                "recipient key digest is not SHA-256 of the result's enclave key",
            )

        # 4. The binding, from what the broker says it used: version 2 with the label and
        # device state its result names, else version 1 under the configured label.
        claimed_state: DeviceState | None = None
        try:
            claim = claims.extra.get(BINDING_CLAIM)
            if claim is not None:
                label, claimed_state = parse_binding_claim(claim)
                binding = derive_session_binding(e.nonce, enclave_key, label, claimed_state)
            else:
                binding = derive_binding(e.nonce, enclave_key, self.config.protocol_label)
        except InputError as exc:
            add("binding_mismatch", f"cannot derive the binding: {exc}")
            raise _Stop from None
        if binding.report_data != e.binding:
            add("binding_mismatch", "logged binding is not derived from the nonce and enclave key")
        if release_like:
            return

        # 5. Re-appraise with the archived evidence and collateral.
        if len(e.evidence) != 1 or e.evidence[0].role != EVIDENCE_ROLE:
            add("evidence_unusable", f"expected one {EVIDENCE_ROLE!r} blob")
            raise _Stop
        ref = e.evidence[0]
        if ref.media_type != EVIDENCE_MEDIA_TYPE:
            add("evidence_unusable", f"evidence media type {ref.media_type!r}")
            raise _Stop
        try:
            bundle = load_bundle(blob(ref.role, ref.sha256))
        except InputError as exc:
            add("evidence_malformed", str(exc))
            raise _Stop from None
        if claimed_state is not None and bundle.device_state != claimed_state:
            # The evidence's state is what a version-2 binding must bind: logged evidence with
            # another state than the result names was not appraised under the logged binding.
            add(
                "binding_mismatch",
                "the logged evidence's CC/DevTools flags or device counts are not the device "
                f"state the result's {BINDING_CLAIM} claim names",
            )
        ctx, missing = self._entry_context(e, policy, blob, add)
        facts["roots_unavailable"] = missing
        devices, enclave = self.config.appraise(bundle, binding, policy, e.time, ctx)
        ours = Verdict.recomputed(devices, enclave, policy_digest)
        if ENCLAVE_SUBMODULE not in logged.submods and ENCLAVE_SUBMODULE in ours.submods:
            # The logged result predates the ``enclave`` submodule (``ear_status_understated``
            # above reports what that hid); the enclave findings and the status are compared
            # all the same, so only the representation is set aside.
            rebuilt = Verdict.build(
                {n: s for n, s in ours.submods.items() if n != ENCLAVE_SUBMODULE},
                list(ours.enclave),
            )
            assert rebuilt is not None
            ours = rebuilt
        facts["recomputed_status"] = ours.status
        diffs = [] if same_verdict(logged, ours) else compare_verdicts(logged, ours)
        facts["verdict_equal"] = not diffs
        if diffs:
            hint = (
                f" (the policy trusts roots not supplied: {', '.join(missing)}; pass them with "
                "--trust-root-candidates)"
                if missing
                else ""
            )
            add("verdict_mismatch", "; ".join(diffs) + hint)

    def _entry_context(
        self,
        e: LogEntry,
        policy: Policy,
        blob: Callable[[str, bytes], bytes],
        add: Callable[[str, str], None],
    ) -> tuple[AppraisalContext, tuple[str, ...]]:
        """The appraisal context for this entry's archived RIMs, roots and held AMD CRLs under
        its policy (it shares the replayer's verifier caches, so building one per entry is
        cheap)."""
        return self._context(
            policy,
            self._rims(e, blob, add),
            self._archived_roots(e, blob, add),
            self._held_crls(e, blob, add),
        )

    @staticmethod
    def _held_crls(
        e: LogEntry, blob: Callable[[str, bytes], bytes], add: Callable[[str, str], None]
    ) -> dict[tuple[SigningKey, Product], bytes]:
        """The AMD CRLs the broker held, by (kind, product), as it checked reports with them.
        Checked per report exactly as the broker did (``verify_snp_report``'s ``held_crls``),
        so only the name is read here; one named twice or unknown is not guessed at."""
        out: dict[tuple[SigningKey, Product], bytes] = {}
        for ref in e.collateral:
            if not ref.role.startswith(AMD_CRL_ROLE_PREFIX):
                continue
            key = _HELD_CRL_ROLES.get(ref.role)
            if key is None or key in out:
                add("collateral_unknown", f"held AMD CRL role {ref.role!r} is unknown or repeated")
                raise _Stop
            out[key] = blob(ref.role, ref.sha256)
        return out

    @staticmethod
    def _rims(
        e: LogEntry, blob: Callable[[str, bytes], bytes], add: Callable[[str, str], None]
    ) -> list[bytes]:
        """The broker's RIMs in order."""
        by_number: dict[int, bytes] = {}
        for ref in e.collateral:
            suffix = ref.role.removeprefix(RIM_ROLE_PREFIX)
            if ref.role.startswith((TRUST_ROOT_ROLE_PREFIX, AMD_CRL_ROLE_PREFIX)):
                continue  # archived trust roots and held CRLs: read by their own methods
            if (
                ref.role.startswith(RIM_ROLE_PREFIX)
                and suffix.isdigit()
                and suffix == str(int(suffix))
            ):
                by_number[int(suffix)] = blob(ref.role, ref.sha256)
            else:
                add("collateral_unknown", f"collateral role {ref.role!r} is not one replay knows")
                raise _Stop
        if sorted(by_number) != list(range(len(by_number))):
            add("collateral_unknown", f"broker RIMs are not numbered 0..{len(by_number) - 1}")
            raise _Stop
        return [by_number[i] for i in range(len(by_number))]

    def _archived_roots(
        self, e: LogEntry, blob: Callable[[str, bytes], bytes], add: Callable[[str, str], None]
    ) -> list[tuple[RootCandidate, x509.Certificate, str]]:
        """Trust roots the broker archived with the entry (``trust-root-<role>-<n>``), parsed
        once per (role, digest): ``blob`` returns only bytes with that digest, and a root that
        does not load is reported for every entry that names it (failures are not kept)."""
        out = []
        for ref in e.collateral:
            if not ref.role.startswith(TRUST_ROOT_ROLE_PREFIX):
                continue
            role = ref.role.removeprefix(TRUST_ROOT_ROLE_PREFIX).rsplit("-", 1)[0]
            der = blob(ref.role, ref.sha256)
            hit = self._roots.get((role, ref.sha256))
            if hit is None:
                try:
                    cand = RootCandidate(role, der)
                    cert = x509.load_der_x509_certificate(der)
                except (InputError, ValueError):
                    add("collateral_unknown", f"archived trust root {ref.role!r} is unreadable")
                    raise _Stop from None
                if len(self._roots) >= MAX_CACHED_ROOTS:
                    self._roots.clear()
                hit = self._roots[(role, ref.sha256)] = (cand, cert, cand.sha256)
            out.append(hit)
        return out

    def _context(
        self,
        policy: Policy,
        rims: list[bytes],
        archived: Sequence[tuple[RootCandidate, x509.Certificate, str]] = (),
        amd_crls: Mapping[tuple[SigningKey, Product], bytes] | None = None,
    ) -> tuple[AppraisalContext, tuple[str, ...]]:
        listed = set(policy.roots.extra_trusted_sha256)
        chosen: dict[str, x509.Certificate] = {}
        arks: list[x509.Certificate] = []
        offered = [*archived, *self.candidates]
        for cand, cert, digest in sorted(offered, key=lambda c: c[2]):
            if digest not in listed:
                continue
            if cand.role == "amd_ark":
                arks.append(cert)
            else:
                chosen.setdefault(cand.role, cert)
        supplied = {digest for _, _, digest in offered}
        ctx = self._shared.sharing_caches(
            rims=rims, candidates=chosen, amd_extra_arks=arks, amd_crls=amd_crls
        )
        return ctx, tuple(sorted(listed - supplied))


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _prefix(kind: EntryKind) -> str:
    """Finding codes of a release entry start ``release_``, of a refusal ``refusal_``."""
    return "refusal" if kind is EntryKind.RELEASE_REFUSED else "release"


# ---- the process pool -----------------------------------------------------------------------

_WORKER: EntryReplayer | None = None


def _init_worker(config: ReplayConfig) -> None:
    # A Ctrl-C on the terminal reaches the whole foreground process group: with Python's
    # default handler every worker printed its own KeyboardInterrupt traceback. Only the parent
    # handles it (one "lessee: interrupted"); it then shuts the pool down, and the workers stop
    # once their queue is closed. Set first, so a Ctrl-C during the replayer's set-up is
    # ignored here too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    global _WORKER  # noqa: PLW0603 (one replayer per worker process, by design)
    _WORKER = EntryReplayer(config)


def _replay_chunk(items: list[EntryInput]) -> list[EntryReplay]:
    assert _WORKER is not None, "worker not initialised"
    return [_WORKER.replay(item) for item in items]


def _pool_context() -> multiprocessing.context.BaseContext:
    """``forkserver`` where it exists: workers fork from a clean single-threaded server (a fork
    of a threaded parent can deadlock), with the replay modules preloaded so they start fast
    (through ``agent.audit._forkserver_preload``, which keeps a Ctrl-C during that import from
    printing the server's traceback)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["agent.audit._forkserver_preload"])
        return ctx
    return multiprocessing.get_context("spawn")


# ---- the whole log ---------------------------------------------------------------------------


@dataclass
class ReplayReport:
    """``audit verify``'s result plus the replay's; ``ok`` iff neither has a finding."""

    audit: AuditResult
    entries: list[EntryReplay] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.audit.ok and not self.findings

    @property
    def all_findings(self) -> list[Finding]:
        return [*self.audit.findings, *self.findings]

    def summary(self) -> dict[str, int]:
        attest = [e for e in self.entries if e.kind is EntryKind.ATTEST]
        kinds = Counter(e.kind for e in self.entries)
        return {
            "entries": self.audit.entries,
            "replayed": len(self.entries),
            "attest": len(attest),
            "release": kinds[EntryKind.RELEASE],
            "release_refused": kinds[EntryKind.RELEASE_REFUSED],
            "verdicts_reproduced": sum(1 for e in attest if e.verdict_equal),
            "affirming": sum(1 for e in attest if e.logged_status is Status.AFFIRMING),
            "findings": len(self.all_findings),
        }

    def to_json(self) -> dict[str, object]:
        audit = self.audit.to_json()
        return {
            "report_version": REPORT_VERSION,
            "ok": self.ok,
            "log": {k: v for k, v in audit.items() if k not in ("ok", "findings")},
            "summary": self.summary(),
            "findings": [{"stage": "verify", **asdict(f)} for f in self.audit.findings]
            + [{"stage": "replay", **asdict(f)} for f in self.findings],
            "entries": [e.to_json() for e in self.entries],
        }


def _inputs(
    bundle: Bundle, audit: AuditResult, keeper: BlobKeeper | None = None
) -> Iterator[EntryInput]:
    """Each decodable entry with the blobs whose bytes match their reference (bounded by
    ``MAX_BLOB_SIZE``; repeated collateral and policies come from a bounded cache). A blob
    ``keeper`` holds was read and hashed by ``audit verify`` and is not read or hashed again."""
    present = bundle.blob_digests()
    cache: dict[bytes, bytes] = {}
    cached_bytes = 0
    for rec, entry in zip(bundle.records, audit.decoded, strict=True):
        if entry is None:
            continue  # audit verify reported it as entry_malformed
        blobs: dict[bytes, bytes] = {}
        evidence = {ref.sha256 for ref in entry.evidence}
        for ref in entry.blob_refs():
            if ref.sha256 in blobs or ref.sha256 not in present or ref.size > MAX_BLOB_SIZE:
                continue
            hit = cache.get(ref.sha256)
            if hit is not None and len(hit) == ref.size:
                blobs[ref.sha256] = hit
                continue
            kept = keeper.take(ref.sha256) if keeper is not None else None
            if kept is not None:
                data = kept  # hashed to ref.sha256 when audit verify read it
                if len(data) != ref.size:
                    continue
            else:
                data = bundle.read_blob(ref.sha256)
                if len(data) != ref.size or hashlib.sha256(data).digest() != ref.sha256:
                    continue
            blobs[ref.sha256] = data
            if len(data) <= MAX_CACHED_BLOB_BYTES and ref.sha256 not in evidence:
                if cached_bytes + len(data) > BLOB_CACHE_BYTES:
                    cache.clear()
                    cached_bytes = 0
                cache[ref.sha256] = data
                cached_bytes += len(data)
        yield EntryInput(rec.index, entry, blobs)


def _chunks(items: Iterator[EntryInput], size: int) -> Iterator[list[EntryInput]]:
    chunk: list[EntryInput] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _run_parallel(
    chunks: Iterator[list[EntryInput]],
    config: ReplayConfig,
    workers: int,
    on_progress: Callable[[int], None] | None,
    *,
    total: int,
    bridge: bool | None = None,
) -> list[EntryReplay]:
    """Replay ``chunks`` (``total`` entries) on ``workers`` processes, in log order.

    With ``bridge`` (default: :data:`BRIDGE_POOL_START`) this process replays entries itself,
    and starts the pool (``agent.audit.pool``) only once the entries it has timed say that the
    rest of the log will take longer than :data:`POOL_START_BREAK_EVEN_S`: a pool costs ~0.4 s
    to start and must be waited for when closed, so a short log is faster without one. Once a
    worker is up, the rest of the log goes to the pool, starting with the rest of the chunk this
    process was in. Without ``bridge``, everything goes to a pool started at once.
    """
    if bridge is None:
        bridge = BRIDGE_POOL_START
    results: dict[int, list[EntryReplay]] = {}
    pending: dict[concurrent.futures.Future[list[EntryReplay]], int] = {}
    local = EntryReplayer(config) if bridge else None
    pool: BackgroundPool | None = None

    def start_pool() -> BackgroundPool:
        return BackgroundPool(
            workers, mp_context=_pool_context(), initializer=_init_worker, initargs=(config,)
        )

    def collect(block: bool) -> None:
        done, _ = concurrent.futures.wait(
            pending,
            timeout=None if block else 0,
            return_when=concurrent.futures.FIRST_COMPLETED,
        )
        for fut in done:
            results[pending.pop(fut)] = out = fut.result()
            if on_progress is not None:
                on_progress(len(out))

    seq = 0  # results are kept per piece of work, numbered in log order

    def to_pool(items: list[EntryInput]) -> None:
        nonlocal seq
        assert pool is not None
        while len(pending) >= workers * (1 + CHUNKS_AHEAD_PER_WORKER):
            collect(block=True)
        pending[pool.submit(_replay_chunk, items)] = seq
        seq += 1

    try:
        if local is None:
            pool = start_pool()
            pool.wait_started()
        replayed_here = 0
        began = time.perf_counter()
        for chunk in chunks:
            start = 0
            if local is not None:
                # Bridging: replay here entry by entry; hand the rest of the chunk (and every
                # later one) to the pool as soon as a worker is up, so that it never sits idle
                # while this process finishes a chunk.
                done_here: list[EntryReplay] = []
                for item in chunk:
                    if pool is not None and pool.ready():
                        local = None
                        break
                    done_here.append(local.replay(item))
                    if on_progress is not None:
                        on_progress(1)
                if done_here:
                    results[seq] = done_here
                    seq += 1
                start = len(done_here)
                replayed_here += start
                if pool is None and replayed_here:
                    per_entry = (time.perf_counter() - began) / replayed_here
                    if per_entry * (total - replayed_here) > POOL_START_BREAK_EVEN_S:
                        pool = start_pool()
            if start < len(chunk):
                to_pool(chunk[start:])
        while pending:
            collect(block=True)
    finally:
        if pool is not None:
            pool.close()
    if local is not None and pool is not None and pool.error is not None:
        _log.warning(  # bridged the whole log: say why the workers did not help
            "replay worker pool did not start (%s); replayed in this process",
            type(pool.error).__name__,
        )
    return [r for i in sorted(results) for r in results[i]]


class _Findings:
    """Replay findings, capped per code like ``audit verify``'s."""

    def __init__(self) -> None:
        self.items: list[Finding] = []
        self.counts: Counter[str] = Counter()

    def add(self, finding: Finding) -> None:
        self.counts[finding.code] += 1
        if self.counts[finding.code] <= MAX_FINDINGS_PER_CODE:
            self.items.append(finding)

    def finish(self) -> list[Finding]:
        for code, n in sorted(self.counts.items()):
            if n > MAX_FINDINGS_PER_CODE:
                self.items.append(
                    Finding(code, f"{n - MAX_FINDINGS_PER_CODE} more {code} findings not listed")
                )
        return self.items


#: Refusal reasons no later release of the same result can make right: the result's status and
#: expiry never change, and a result the broker could not find, or found under another key,
#: means its state and its log disagree. (``result_used`` is not here: a concurrent caller's
#: refusal can be logged just before the winning release; ``release_repeated`` covers a second
#: release.) The other reasons are transient: the caller asked for another model, or the
#: model's policy or manifest pin changed and may change back. ``expired`` counts only against
#: a release logged at or after the refusal's time: a release decided in time (before the
#: result's ``exp``) can be appended after a concurrent caller's refusal for expiry, since the
#: winner unwraps and seals the key between its expiry check and its append.
PERMANENT_REFUSALS = frozenset(
    {
        RefusalReason.UNKNOWN_RESULT,
        RefusalReason.NOT_AFFIRMING,
        RefusalReason.EXPIRED,
        RefusalReason.KEY_MISMATCH,
    }
)
_REFUSAL_ORDER = tuple(RefusalReason)


def cross_check(entries: Sequence[EntryReplay]) -> list[Finding]:
    """Steps 6-8 over per-entry results in log order (pure: no bundle, no keys)."""
    out: list[Finding] = []
    nonces: dict[bytes, int] = {}
    attests: dict[str, EntryReplay] = {}
    released: dict[str, int] = {}
    refused: dict[str, dict[RefusalReason, EntryReplay]] = {}
    # ``result_used`` is judged against every release in the log, not only earlier ones: a
    # concurrent caller's refusal can be committed before the winner's release entry.
    ever_released = {
        r.result_id: r.index
        for r in reversed(entries)
        if r.kind is EntryKind.RELEASE and r.result_id is not None
    }
    first_v2: int | None = None  # the first version-2 release or refusal, in log order
    for r in entries:
        if r.kind is not EntryKind.ATTEST:
            if r.entry_version >= 2 and first_v2 is None:
                first_v2 = r.index
            elif r.entry_version < 2 and first_v2 is not None:
                # A broker writes version 2 for every release and refusal once it can; version
                # 1 names no model version or manifest, so its manifest pin is not decidable. A
                # version-1 entry after a version-2 one is a broker choosing the encoding that
                # hides what it released, not an older log.
                out.append(
                    Finding(
                        "entry_version_downgrade",
                        f"version-{r.entry_version} {r.kind.value} entry after the version-2 "
                        f"entry {first_v2}: it names no model version or manifest, so the "
                        "manifest pin cannot be judged",
                        r.index,
                    )
                )
        if r.kind is EntryKind.RELEASE_REFUSED:
            out.extend(_check_refusal(r, attests, ever_released, refused))
            continue
        if r.kind is EntryKind.RELEASE:
            out.extend(_check_release(r, attests, released, refused))
            continue
        if r.kind is EntryKind.ATTEST:
            first = nonces.setdefault(r.nonce, r.index)
            if first != r.index:
                out.append(
                    Finding("nonce_reused", f"nonce already used by attest entry {first}", r.index)
                )
            if r.result_id is not None:
                prior = attests.setdefault(r.result_id, r)
                if prior is not r:
                    out.append(
                        Finding(
                            "result_id_reused",
                            f"result {r.result_id} already issued in entry {prior.index}",
                            r.index,
                        )
                    )
    return out


def _same_result(r: EntryReplay, a: EntryReplay) -> list[tuple[str, str]]:
    """(code suffix, message) for each way a release or refusal ``r`` departs from the attest
    entry ``a`` that issued its result: the token, enclave key, nonce, binding, time."""
    where = f"attest entry {a.index}"
    out: list[tuple[str, str]] = []
    if r.result_sha256 != a.result_sha256:
        out.append(("result_differs", f"the result is not the one {where} logged"))
    if r.recipient_key_sha256 != a.enclave_key_sha256:
        out.append(("key_mismatch", f"recipient key is not the enclave key {where} attested"))
    if r.nonce != a.nonce:
        out.append(("nonce_mismatch", f"nonce differs from {where}"))
    if r.binding != a.binding:
        out.append(("binding_mismatch", f"binding differs from {where}"))
    if r.time < a.time:
        out.append(("before_attest", f"logged before {where} ({a.time.isoformat()})"))
    return out


def _check_release(
    r: EntryReplay,
    attests: Mapping[str, EntryReplay],
    released: dict[str, int],
    refused: Mapping[str, Mapping[RefusalReason, EntryReplay]],
) -> list[Finding]:
    def f(code: str, message: str) -> Finding:
        return Finding(code, message, r.index)

    if r.result_id is None:
        return []  # its result did not verify: already a finding on this entry
    out: list[Finding] = []
    for reason, refusal in sorted(refused.get(r.result_id, {}).items(), key=lambda kv: kv[1].index):
        if reason is RefusalReason.EXPIRED and r.time < refusal.time:
            continue  # decided before the refusal, appended after it (see PERMANENT_REFUSALS)
        if reason in PERMANENT_REFUSALS:
            out.append(
                f(
                    "release_after_refusal",
                    f"entry {refusal.index} refused result {r.result_id} for {reason.value}, "
                    "which no later release can make right",
                )
            )
    a = attests.get(r.result_id)
    if a is None:
        out.append(
            f("release_without_attest", f"no earlier attest entry issued result {r.result_id}")
        )
        return out
    where = f"attest entry {a.index}"
    if a.logged_status is not Status.AFFIRMING:
        status = a.logged_status.value if a.logged_status else "unverifiable"
        out.append(f("release_not_affirming", f"{where} logged {status}, not affirming"))
    elif a.recomputed_status is not Status.AFFIRMING:
        status = a.recomputed_status.value if a.recomputed_status else "not reproducible"
        out.append(f("release_verdict_not_reproduced", f"{where} re-appraises as {status}"))
    out.extend(f(f"release_{code}", message) for code, message in _same_result(r, a))
    if r.model_id != a.model_id:
        out.append(
            f("release_model_mismatch", f"model {r.model_id!r}, {where} was for {a.model_id!r}")
        )
    late = any(x.code == "release_after_expiry" for x in r.findings)  # by its own token
    if not late and a.expires_at is not None and int(r.time.timestamp()) > a.expires_at:
        out.append(
            f(
                "release_after_expiry",
                f"released at {int(r.time.timestamp())}, result expired at {a.expires_at}",
            )
        )
    first = released.setdefault(r.result_id, r.index)
    if first != r.index:
        out.append(f("release_repeated", f"result {r.result_id} already released in entry {first}"))
    return out


def _check_refusal(
    r: EntryReplay,
    attests: Mapping[str, EntryReplay],
    ever_released: Mapping[str, int],
    refused: dict[str, dict[RefusalReason, EntryReplay]],
) -> list[Finding]:
    """Step 8: a ``release_refused`` entry. It never counts as a release. Its result must have
    been issued by an earlier attest entry (token, key, nonce, binding as for a release), at
    most one refusal is logged per (result, reason), and the logged reason must agree with
    the log wherever that can be decided offline (``_reason_disagreements``)."""

    def f(code: str, message: str) -> Finding:
        return Finding(code, message, r.index)

    if r.result_id is None or r.reason is None:
        return []  # its result did not verify: already a finding on this entry
    out: list[Finding] = []
    seen = refused.setdefault(r.result_id, {})
    first = seen.setdefault(r.reason, r)
    if first.index != r.index:
        out.append(
            f(
                "refusal_repeated",
                f"result {r.result_id} already refused for {r.reason.value} in entry {first.index}",
            )
        )
    a = attests.get(r.result_id)
    if r.reason is RefusalReason.UNKNOWN_RESULT:
        where = f"attest entry {a.index} issued it" if a else "no attest entry logged it"
        out.append(
            f(
                "refusal_reason_inconsistent",
                "unknown_result, but the result verifies with the broker's own key, so the "
                f"broker issued it ({where}): its state lost the result",
            )
        )
        return out
    if a is None:
        out.append(
            f("refusal_without_attest", f"no earlier attest entry issued result {r.result_id}")
        )
        return out
    out.extend(f(f"refusal_{code}", message) for code, message in _same_result(r, a))
    out.extend(
        f("refusal_reason_inconsistent", f"{r.reason.value}, but {message}")
        for message in _reason_disagreements(r, a, ever_released)
    )
    return out


def _reason_disagreements(
    r: EntryReplay, a: EntryReplay, ever_released: Mapping[str, int]
) -> list[str]:
    """How the logged reason of refusal ``r`` disagrees with the log (``a``: the attest entry
    of its result). ``Broker.release_key`` checks in ``RefusalReason`` order, so a refusal
    says its own check failed *and* every check before it passed; both are judged where the
    log decides them:

    * ``model_mismatch``: the requested model is not the one the result names;
    * ``not_affirming``: ``a`` logged a verdict that is not affirming;
    * ``policy_changed``: the logged policy (the model's at the time) is not the result's;
    * ``manifest_pin``: the logged policy pins manifests and the logged manifest is not
      among them (version-2 entries; for version 1 not decidable: the registered manifest
      digest is not logged there);
    * ``expired``: logged after the result's ``exp``. It is also logged for a token refused
      as expired before any other check (past the EAR's clock skew), so it implies nothing
      about the checks before it;
    * ``key_mismatch``: never right: the broker's record of the result names another key
      than the token it signed and ``a`` logged, so its state and its log disagree;
    * ``result_used``: a release of the result is in the log (usually earlier; a concurrent
      caller's refusal can be committed just before the winner's release entry).

    Except for ``expired``, the result had not expired past the EAR's clock skew (the broker
    refuses such a token before its other checks, and as ``expired``).
    """
    out: list[str] = []
    reason, exp = r.reason, r.expires_at
    assert reason is not None
    logged_at = int(r.time.timestamp())
    model_ok = r.model_id == r.result_model_id and r.model_id == a.model_id
    affirming = a.logged_status is Status.AFFIRMING
    when = f"logged at {logged_at}, the result expires at {exp}"
    if reason is RefusalReason.MODEL_MISMATCH and model_ok:
        out.append(f"the result was issued for the requested model {r.model_id!r}")
    elif reason is RefusalReason.NOT_AFFIRMING and affirming:
        out.append(f"attest entry {a.index} logged an affirming verdict")
    elif reason is RefusalReason.POLICY_CHANGED and r.policy_matches:
        out.append("the logged policy is the one the result names")
    elif reason is RefusalReason.MANIFEST_PIN and r.manifest_admitted:
        out.append(
            "the logged policy pins no manifests or pins the logged one "
            f"({r.manifest_sha256.hex() if r.manifest_sha256 else '?'})"
        )
    elif reason is RefusalReason.EXPIRED and (exp is None or r.time.timestamp() <= exp):
        out.append(f"it had not expired ({when})")
    elif reason is RefusalReason.KEY_MISMATCH:
        out.append(
            f"the token is the one attest entry {a.index} logged for this key: the broker's "
            "record of the result and its log disagree"
        )
    elif reason is RefusalReason.RESULT_USED and r.result_id not in ever_released:
        out.append(f"no release of result {r.result_id} is in the log")
    if reason is RefusalReason.EXPIRED:
        return out
    if exp is not None and logged_at > exp + MAX_CLOCK_SKEW_SECONDS:
        out.append(
            f"the result had expired past the clock skew, so it is refused as expired "
            f"first ({when})"
        )
    passed = _REFUSAL_ORDER[: _REFUSAL_ORDER.index(reason)]
    if RefusalReason.MODEL_MISMATCH in passed and not model_ok:
        out.append(
            f"the model {r.model_id!r} is not the result's {a.model_id!r} (checked before it)"
        )
    if RefusalReason.NOT_AFFIRMING in passed and not affirming:
        status = a.logged_status.value if a.logged_status else "unverifiable"
        out.append(f"attest entry {a.index} logged {status} (checked before it)")
    if RefusalReason.POLICY_CHANGED in passed and r.policy_matches is False:
        out.append("the logged policy is not the result's (checked before it)")
    if RefusalReason.MANIFEST_PIN in passed and r.manifest_admitted is False:
        out.append("the logged policy does not pin the logged manifest (checked before it)")
    if RefusalReason.EXPIRED in passed and exp is not None and logged_at > exp:
        out.append(f"the result had expired ({when}; checked before it)")
    return out


def replay_bundle(
    bundle: Bundle,
    log_key: NoteVerifier,
    verifier_key: VerifyingKey,
    *,
    previous: Sequence[tuple[str, bytes]] = (),
    witnesses: Sequence[NoteVerifier] = (),
    candidates: Sequence[RootCandidate] = (),
    protocol_label: str = DEFAULT_PROTOCOL_LABEL,
    workers: int = 1,
    appraise: ReplayAppraise = composite_appraise,
    on_progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """``verify_bundle``, then steps 1-7 above. Raises only for unreadable input.

    ``witnesses``: cosigner keys whose cosignatures ``verify_bundle`` checks where present.
    ``workers`` > 1 replays in that many processes (``appraise`` must then be a module-level
    function, since it is sent to them by reference). ``on_progress(n)`` is told as entries
    finish.
    """
    if not 1 <= workers <= MAX_WORKERS:
        raise InputError(f"workers must be 1..{MAX_WORKERS}")
    if len(candidates) > MAX_ROOT_CANDIDATES:
        raise InputError(f"at most {MAX_ROOT_CANDIDATES} trust-root candidates")
    keeper = BlobKeeper(KEPT_BLOB_BYTES, MAX_CACHED_BLOB_BYTES)
    audit = verify_bundle(bundle, log_key, previous=previous, keeper=keeper, witnesses=witnesses)
    config = ReplayConfig(_spki(verifier_key), tuple(candidates), protocol_label, appraise)
    inputs = _inputs(bundle, audit, keeper)
    if workers == 1:
        replayer = EntryReplayer(config)
        entries = []
        for item in inputs:
            entries.append(replayer.replay(item))
            if on_progress is not None:
                on_progress(1)
    else:
        entries = _run_parallel(
            _chunks(inputs, CHUNK_ENTRIES),
            config,
            workers,
            on_progress,
            total=sum(1 for e in audit.decoded if e is not None),  # what ``_inputs`` yields
        )
    out = _Findings()
    for r in entries:
        for finding in r.findings:
            out.add(finding)
    for finding in cross_check(entries):
        out.add(finding)
    return ReplayReport(audit=audit, entries=entries, findings=out.finish())


def replay_bundle_file(
    path: str | Path, log_key: NoteVerifier, verifier_key: VerifyingKey, **kw: Any
) -> ReplayReport:
    """Open, replay and close a bundle file (keyword arguments as ``replay_bundle``)."""
    with Bundle(path) as bundle:
        return replay_bundle(bundle, log_key, verifier_key, **kw)


def default_workers() -> int:
    """One worker per CPU this process may use."""
    try:
        return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))
    except AttributeError:  # pragma: no cover (not Linux)
        return max(1, min(MAX_WORKERS, os.cpu_count() or 1))
