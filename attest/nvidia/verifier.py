"""The NVIDIA GPU / NVSwitch evidence pipeline: evidence + time + collateral in, results out.

For every device, in order (each step recorded, a failure never hides the later ones that can
still run):

1. architecture: declared (evidence JSON) and certified (leaf certificate) agree;
2. parse the report strictly (``spdm``, ``opaque``); a parse failure ends this device;
3. device chain: exactly 5 certificates to the pinned NVIDIA Device Identity CA, at ``at``;
4. OCSP on the three middle certificates (NVIDIA's rule) per ``revocation_mode``;
5. report signature with the leaf key;
6. requester nonce == ``expected_nonce`` (no expected nonce: a warning, never a pass);
7. FWID binding (absence in old reports is recorded as ``absent-in-report``);
8. versions NVML declared next to the evidence (JSON) equal the signed ones;
9. RIMs chosen by NVIDIA's naming rules from the signed opaque fields: fetched from
   ``rim_source``, parsed, signer chain + XML-DSig at ``at`` (``attest.nvidia.rim``), OCSP on the
   RIM chain, colloquialVersion == the report's version;
10. golden vs runtime measurements (driver + VBIOS for GPUs, BIOS for NVSwitches), every
    mismatched index reported.

Then, for a protected-PCIe set (any NVSwitch, or any GPU in PPCIe mode), the topology
(``attest.nvidia.topology``), and for every set: no device given twice (by its leaf key,
its leaf's signed body and its device identity key, never by certificate bytes, which an ECDSA
signature's other form changes: ``DeviceIdentity``).

A device is ``affirming`` when nothing failed and nothing was left unchecked, ``warning`` when
nothing failed but something was explicitly not checked (``revocation_mode=skip``, no expected
nonce, a certificate hold the caller allowed), ``contraindicated`` otherwise. Pure: no I/O.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from functools import partial
from typing import Generic, Literal, Protocol, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from attest.concurrency import Deferred, offer
from attest.errors import ChainError, InputError, VerificationError
from attest.nvidia.claims import (
    NOT_CHECKED_CHAIN,
    ChainClaim,
    DeviceChecks,
    Failure,
    RimChecks,
    device_claims,
)
from attest.nvidia.device import (
    DEVICE_CHAIN_LENGTH,
    DeviceCheckError,
    FwidError,
    check_nonce,
    compare_fwid,
    leaf_fwid,
    resolve_arch,
    verify_device_chain,
    verify_signature,
)
from attest.nvidia.evidence import Arch, DeviceEvidence
from attest.nvidia.opaque import (
    DeviceKind,
    DeviceReport,
    FeatureFlag,
    OpaqueData,
    parse_device_report,
)
from attest.nvidia.rim import (
    NVDEC_RIM_INDEX,
    MeasurementComparison,
    Rim,
    RimChainError,
    RimParseError,
    RimSelectionError,
    RimSource,
    RimVerifier,
    VerifiedRim,
    compare_measurements,
    compare_single,
    driver_rim_id,
    switch_bios_rim_id,
    vbios_rim_id,
)
from attest.nvidia.spdm import (
    MAX_REPORT_LENGTH,
    MIN_REPORT_LENGTH,
    NONCE_LENGTH,
    REQUEST_LENGTH,
    RESPONSE_HEADER_LENGTH,
    SIGNATURE_LENGTH,
    ReportParseError,
)
from attest.nvidia.topology import TopologyResult, check_topology
from attest.revocation.ocsp import (
    MAX_OCSP_RESPONSE_BYTES,
    OcspCache,
    OcspCheck,
    OcspPrefetch,
    OcspSource,
    RevocationMode,
    StapledOcsp,
    check_chain_revocation,
    nvidia_device_ocsp_indices,
    nvidia_rim_ocsp_indices,
)
from attest.timeutil import require_aware
from attest.x509chain import ChainCache, VerifiedChain, describe


class Status(StrEnum):
    """Per-device and overall verdicts (EAR trustworthiness tiers, by name)."""

    AFFIRMING = "affirming"
    WARNING = "warning"
    CONTRAINDICATED = "contraindicated"


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Memo(Generic[K, V]):
    """A bounded map for results that depend only on their key (oldest out first)."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        return self._entries.get(key)  # oldest-first eviction; no reordering on a hit

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)


class _ByIdentity(Generic[V]):
    """Results remembered per *object* (the same chain tuple, the same verified chain).

    A front for the byte-keyed caches: lookups cost one dict probe on ``id(obj)`` instead of
    hashing certificates. The object itself is kept, so its id cannot be reused while the entry
    lives, and a hit requires the very same object. Bounded (oldest out first), thread-safe.
    """

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: dict[int, tuple[object, V]] = {}
        self._lock = threading.Lock()

    def get(self, obj: object) -> V | None:
        entry = self._entries.get(id(obj))
        return entry[1] if entry is not None and entry[0] is obj else None

    def put(self, obj: object, value: V) -> None:
        with self._lock:
            self._entries[id(obj)] = (obj, value)
            while len(self._entries) > self._max:
                del self._entries[next(iter(self._entries))]


class ReportParser(Protocol):
    """What the verifier parses reports with (``ReportCache`` or ``ReportTemplates``)."""

    def parse(self, data: bytes, kind: DeviceKind) -> DeviceReport: ...


#: Offset of the requester's nonce in a report (after version, code, Param1, Param2).
_REQUEST_NONCE_AT = 4
#: Offset of MeasurementRecordLength (3 bytes, little-endian) in the MEASUREMENTS response.
_RECORD_LENGTH_AT = 5


def _session_fields(data: bytes) -> tuple[int, int] | None:
    """Where a report's per-session bytes are: (responder nonce offset, signature offset).

    Read from the report's own header (MeasurementRecordLength); None when the report cannot
    hold them where a well-formed one would (the full parser then decides what is wrong).
    """
    n = len(data)
    if not MIN_REPORT_LENGTH <= n <= MAX_REPORT_LENGTH:
        return None
    at = REQUEST_LENGTH + _RECORD_LENGTH_AT
    record_length = int.from_bytes(data[at : at + 3], "little")
    nonce_at = REQUEST_LENGTH + RESPONSE_HEADER_LENGTH + record_length
    signature_at = n - SIGNATURE_LENGTH
    if nonce_at + NONCE_LENGTH + 2 > signature_at:
        return None
    return nonce_at, signature_at


class ReportTemplates:
    """Parsed reports of known devices, reused for their next reports (bounded, thread-safe).

    Two reports of one GPU in one configuration differ in exactly three places: the requester's
    nonce (the session's), the responder's nonce (fresh per report) and the signature. The
    strict parser (``attest.nvidia.spdm``, ``attest.nvidia.opaque``) checks everything else,
    64 measurement blocks and the opaque TLVs, and costs about half a signature check; it
    reads those three fields only as opaque bytes of fixed length and position.

    So entries are keyed by the device kind and the *exact bytes of everything else* (with the
    report length and the field positions, which the bytes themselves fix). A hit means every
    byte the parser checks is the same as in a report that parsed; the answer is that parse
    with the three fields taken from the new bytes, so it equals what a fresh parse gives
    (tests/nvidia/test_report_templates.py checks equality, and that the parser ignores the
    contents of those fields, on random nonces, signatures and byte flips). An exact repeat is
    a hit too. A parse failure raises and is never remembered. Nothing here judges the nonce
    or the signature: the verifier checks both on every report, as before.
    """

    def __init__(self, max_entries: int = 256) -> None:
        self._max = max_entries
        self._entries: OrderedDict[tuple[DeviceKind, int, int, bytes], DeviceReport] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def parse(self, data: bytes, kind: DeviceKind) -> DeviceReport:
        """``parse_device_report(data, kind)``; raises only ``ReportParseError``."""
        raw = bytes(data)
        fields = _session_fields(raw)
        if fields is None:
            return parse_device_report(raw, kind)
        nonce_at, signature_at = fields
        key = (
            kind,
            len(raw),
            nonce_at,
            raw[:_REQUEST_NONCE_AT]
            + raw[_REQUEST_NONCE_AT + NONCE_LENGTH : nonce_at]
            + raw[nonce_at + NONCE_LENGTH : signature_at],
        )
        with self._lock:
            template = self._entries.get(key)
            if template is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
        if template is None:
            report = parse_device_report(raw, kind)
            with self._lock:
                self._entries[key] = report
                self._entries.move_to_end(key)
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
            return report
        spdm = template.spdm
        request = replace(
            spdm.request,
            raw=raw[:REQUEST_LENGTH],
            nonce=raw[_REQUEST_NONCE_AT : _REQUEST_NONCE_AT + NONCE_LENGTH],
        )
        response = replace(
            spdm.response,
            raw=raw[REQUEST_LENGTH:],
            responder_nonce=raw[nonce_at : nonce_at + NONCE_LENGTH],
            signature=raw[signature_at:],
        )
        return replace(template, spdm=replace(spdm, raw=raw, request=request, response=response))

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def measurement_record(report: DeviceReport) -> bytes:
    """The exact bytes of the report's MeasurementRecord (its blocks), as signed."""
    response = report.spdm.response
    return response.raw[RESPONSE_HEADER_LENGTH : RESPONSE_HEADER_LENGTH + response.record_length]


class _RevocationKeys:
    """Which OCSP verdict-cache entries answered a chain's revocation check from a stapled set.

    ``check_chain_revocation`` spends most of a warm check deriving, for every certificate, the
    CertID to find its stapled response and the verdict-cache key (both hash the issuer's name,
    key and DER). A ``StapledOcsp`` never changes once built, so for the same stapled-set object
    and the same verified chain those are the same every time: this memo keeps the keys, and a
    later check asks the verdict cache with them directly. The verdict cache still decides
    (a hit only inside each verdict's validity window; failures were never stored there), so
    a hit here is exactly what the full check would return. Anything else (a miss, a response
    missing, a window passed) runs the full check.

    Keyed by object identity: the chain is held (it is small and already cached), the stapled
    set only weakly, so a broker's bounded memo of stapled sets stays the only thing that keeps
    them alive. Bounded (oldest out first), thread-safe.
    """

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: dict[
            tuple[int, int, bool, tuple[int, ...]],
            tuple[weakref.ref[StapledOcsp], object, tuple[bytes, ...]],
        ] = {}
        self._lock = threading.Lock()

    def get(
        self, source: StapledOcsp, anchor: object, allow_hold: bool, indices: tuple[int, ...]
    ) -> tuple[bytes, ...] | None:
        entry = self._entries.get((id(source), id(anchor), allow_hold, indices))
        if entry is None or entry[0]() is not source or entry[1] is not anchor:
            return None
        return entry[2]

    def put(
        self,
        source: StapledOcsp,
        anchor: object,
        allow_hold: bool,
        indices: tuple[int, ...],
        keys: tuple[bytes, ...],
    ) -> None:
        with self._lock:
            self._entries[(id(source), id(anchor), allow_hold, indices)] = (
                weakref.ref(source),
                anchor,
                keys,
            )
            while len(self._entries) > self._max:
                del self._entries[next(iter(self._entries))]


def _public_key_der(cert: x509.Certificate) -> bytes | None:
    """The certificate's public key as canonical SubjectPublicKeyInfo DER (re-encoded from the
    key, so two encodings of one key compare equal); None for a key ``cryptography`` cannot
    load (that device's chain fails on its own)."""
    try:
        return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, UnsupportedAlgorithm):
        return None


@dataclass(frozen=True)
class DeviceIdentity:
    """What names one physical device in its certificate chain, whatever the encoding.

    A certificate's DER is not an identity: an ECDSA signature (r, s) is equally valid as
    (r, n - s), so anyone can re-encode a device's leaf into other bytes that still chain. These
    cannot be changed without the keys: the leaf's public key (the key that signs the reports),
    the leaf's signed body (``tbs_certificate_bytes``) and the public key of the certificate
    below it, the per-chip device identity (BROM) certificate, which stays the same when the
    device makes a new leaf. Any of them seen twice in one set is one device given twice.
    """

    leaf_key: bytes | None
    leaf_tbs: bytes
    identity_key: bytes | None

    @classmethod
    def of(cls, chain: tuple[x509.Certificate, ...]) -> DeviceIdentity:
        return cls(
            leaf_key=_public_key_der(chain[0]),
            leaf_tbs=chain[0].tbs_certificate_bytes,
            identity_key=_public_key_der(chain[1]) if len(chain) > 1 else None,
        )


class VerifierCaches:
    """Everything worth remembering between verifications, each keyed by exact bytes.

    * ``chains``: verified X.509 chains (device and RIM), valid for their validity window, and
      below them verified links (child, issuer), so the driver and VBIOS RIM chains pay for
      their shared L3 -> CA -> root signatures once even when cold; ``device_chains`` puts a
      memo keyed by the certificate objects in front of it (saves re-serialising five
      certificates to build the byte key), and ``device_chain_objects`` one keyed by the chain
      tuple itself (saves hashing five certificates when the same evidence object comes back);
    * ``rims``: verified RIMs (XML-DSig + signer chain), by their exact bytes and window;
    * ``reports``: parsed reports, by the exact bytes of everything but the per-session
      fields (``ReportTemplates``), so a device's next report skips the strict parse;
    * ``ocsp``: verified OCSP verdicts, by response bytes, question and freshness window;
    * ``comparisons``: golden-vs-runtime results (GPU pair or NVSwitch single RIM), by
      (the report's MeasurementRecord bytes, driver RIM bytes or ``b""``, VBIOS/BIOS RIM bytes,
      skipped indexes): the comparison reads nothing else of the report, and is deterministic,
      so a hit is exactly what a fresh comparison gives (also for the device's next report);
    * ``skipped``: the "skipped" OCSP verdicts of ``--revocation skip``, by certificates;
    * ``revocation_keys``: for a stapled set and a verified chain, the ``ocsp`` keys that
      answered it (see ``_RevocationKeys``); ``leaves``: a chain's leaf FWID and BROM name;
      ``identities``: what identifies a chain's physical device (``DeviceIdentity``).

    Failures are never cached. With all warm, re-verifying a report costs about one P-384
    signature check (bench/bench_gpu.py measures the ratio).
    """

    def __init__(
        self,
        max_entries: int = 256,
        *,
        device_root: x509.Certificate | None = None,
        rim_root: x509.Certificate | None = None,
    ) -> None:
        # Roots default to NVIDIA's pinned ones; a caller whose policy names other roots (the
        # demo's emulation roots) builds caches for them. Cached verdicts are per root set.
        self.device_root = device_root
        self.chains = ChainCache(max_entries)
        self.rims = RimVerifier(root=rim_root, chain_cache=self.chains, max_entries=max_entries)
        self.reports: ReportParser = ReportTemplates(max_entries)
        self.ocsp = OcspCache(max_entries * 4)
        self.device_chains: _Memo[tuple[x509.Certificate, ...], VerifiedChain] = _Memo(max_entries)
        self.device_chain_objects: _ByIdentity[VerifiedChain] = _ByIdentity(max_entries)
        self.comparisons: _Memo[
            tuple[bytes, bytes, bytes, frozenset[int]], MeasurementComparison
        ] = _Memo(max_entries)
        #: chain tuple -> (the leaf's FWID, the BROM's name for ``hwmodel``)
        self.leaves: _ByIdentity[tuple[bytes | None, str | None]] = _ByIdentity(max_entries)
        #: chain tuple -> what identifies the physical device (``DeviceIdentity``)
        self.identities: _ByIdentity[DeviceIdentity] = _ByIdentity(max_entries)
        self.skipped: _ByIdentity[tuple[OcspCheck, ...]] = _ByIdentity(max_entries)
        # a device chain and two RIM chains per device
        self.revocation_keys = _RevocationKeys(max_entries * 3)

    def device_chain_remembered(
        self, chain: tuple[x509.Certificate, ...], at: datetime
    ) -> VerifiedChain | None:
        """The verified chain for these certificates, if remembered and valid at ``at``."""
        hit = self.device_chain_objects.get(chain)
        if hit is None:
            hit = self.device_chains.get(chain)
            if hit is not None:
                self.device_chain_objects.put(chain, hit)
        if hit is not None and hit.valid_from <= at <= hit.valid_until:
            return hit
        return None

    def device_chain(self, chain: tuple[x509.Certificate, ...], at: datetime) -> VerifiedChain:
        hit = self.device_chain_remembered(chain, at)
        if hit is not None:
            return hit
        verified = verify_device_chain(chain, at=at, cache=self.chains, root=self.device_root)
        self.device_chains.put(chain, verified)
        self.device_chain_objects.put(chain, verified)
        return verified


@dataclass(frozen=True)
class DeviceResult:
    """One device's verdict: NVIDIA-named claims, every failure, every warning."""

    index: int
    arch: str | None
    kind: DeviceKind | None
    status: Status
    claims: Mapping[str, object]
    failures: tuple[Failure, ...]
    warnings: tuple[str, ...]
    #: RIM indexes (not block indexes) whose golden values the report does not satisfy
    mismatched_rim_indexes: tuple[int, ...] = ()
    ocsp: tuple[OcspCheck, ...] = field(default=(), repr=False)

    #: Submodule name: ``gpu0``, ``switch1`` (numbered per kind), ``device3`` if the kind is unknown.
    name: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "name": self.name,
            "arch": self.arch,
            "status": self.status.value,
            "claims": dict(self.claims),
            "failures": [f.to_json() for f in self.failures],
            "warnings": list(self.warnings),
            "mismatched_rim_indexes": list(self.mismatched_rim_indexes),
        }


@dataclass(frozen=True)
class EvidenceSetResult:
    """The verdict on a whole evidence set. ``status`` is the worst device / set verdict."""

    devices: tuple[DeviceResult, ...]
    topology: TopologyResult | None
    failures: tuple[Failure, ...]
    warnings: tuple[str, ...]
    status: Status
    at: datetime

    @property
    def ok(self) -> bool:
        """True only when every check passed (no warning either)."""
        return self.status is Status.AFFIRMING

    def to_json(self) -> dict[str, object]:
        topo: dict[str, object] | None = None
        if self.topology is not None:
            topo = {
                "ok": self.topology.ok,
                "switch_pdis": list(self.topology.switch_pdis),
                "gpu_pdis": list(self.topology.gpu_pdis),
                "failures": [f.to_json() for f in self.topology.failures],
            }
        return {
            "status": self.status.value,
            # true only when everything was checked and passed: a WARNING set may never have
            # had its nonce checked (a replay) or its revocation looked up
            "x-nvidia-overall-att-result": self.status is Status.AFFIRMING,
            "verification_time": self.at.isoformat(),
            "devices": [d.to_json() for d in self.devices],
            "topology": topo,
            "failures": [f.to_json() for f in self.failures],
            "warnings": list(self.warnings),
        }


# --- helpers ----------------------------------------------------------------------------------

#: Worst first: the status a chain claim shows when its certificates disagree.
_OCSP_ORDER = ("revoked", "invalid", "unknown", "missing", "skipped", "certificate_hold", "good")


def _chain_status(exc: ChainError) -> str:
    reason = getattr(exc, "chain_reason", exc.reason)
    if reason in ("expired", "not_yet_valid"):
        return reason
    return "invalid"


class _Device:
    """Mutable scratch space for one device while its checks run."""

    def __init__(
        self, evidence: DeviceEvidence, revocation_mode: RevocationMode, caches: VerifierCaches
    ) -> None:
        self.evidence = evidence
        self.mode = revocation_mode
        self.caches = caches
        self.failures: list[Failure] = []
        self.warnings: list[str] = []
        self.ocsp: list[OcspCheck] = []
        self.mismatched: tuple[int, ...] = ()
        #: stapled response checks started ahead (``_ColdWork``), taken by the OCSP steps
        self.prefetched: OcspPrefetch | None = None

    def fail(self, fieldname: str, expected: object, actual: object, detail: str = "") -> None:
        self.failures.append(Failure(fieldname, expected, actual, detail))

    def revocation(
        self,
        what: str,
        anchor: object,
        certs: Sequence[x509.Certificate],
        indices: Sequence[int],
        *,
        source: OcspSource | None,
        at: datetime,
        allow_hold: bool,
        claim: str,
    ) -> tuple[str, str | None]:
        """Run OCSP on ``certs[indices]``; record failures/warnings; return (status, reason)."""
        # ``anchor``: the verified chain object these certificates come from (identity memo)
        skipped = self.caches.skipped.get(anchor) if self.mode is RevocationMode.SKIP else None
        if skipped is not None:
            checks = skipped
        else:
            remembered = self._remembered_verdicts(
                anchor=anchor, source=source, indices=tuple(indices), at=at, allow_hold=allow_hold
            )
            if remembered is not None:
                checks = remembered
            else:
                checks = check_chain_revocation(
                    certs,
                    indices=indices,
                    mode=self.mode,
                    source=source,
                    at=at,
                    allow_hold=allow_hold,
                    cache=self.caches.ocsp,
                    prefetched=self.prefetched,
                )
                self._remember_keys(
                    anchor=anchor,
                    certs=certs,
                    source=source,
                    indices=tuple(indices),
                    allow_hold=allow_hold,
                    checks=checks,
                )
            if self.mode is RevocationMode.SKIP:
                self.caches.skipped.put(anchor, checks)
        self.ocsp.extend(checks)
        if self.mode is RevocationMode.SKIP:
            self.warnings.append(f"{what}: revocation NOT checked (--revocation skip)")
        for c in checks:
            if c.ok and c.status == "certificate_hold":
                self.warnings.append(f"{what}: '{c.subject}' is on hold (allowed by policy)")
            elif not c.ok and c.status != "skipped":
                self.fail(claim, "good", c.status, f"{c.subject}: {c.detail}")
        worst = min((c.status for c in checks), key=_OCSP_ORDER.index, default="good")
        reason = next((c.revocation_reason for c in checks if c.revocation_reason), None)
        return worst, reason

    def _remembered_verdicts(
        self,
        *,
        anchor: object,
        source: OcspSource | None,
        indices: tuple[int, ...],
        at: datetime,
        allow_hold: bool,
    ) -> tuple[OcspCheck, ...] | None:
        """The verdicts ``check_chain_revocation`` would return, straight from the verdict
        cache, when this stapled set answered this chain before (None: run the full check)."""
        if self.mode is not RevocationMode.STAPLED or not isinstance(source, StapledOcsp):
            return None
        keys = self.caches.revocation_keys.get(source, anchor, allow_hold, indices)
        if keys is None:
            return None
        out: list[OcspCheck] = []
        for key in keys:
            hit = self.caches.ocsp.get(key, at)
            if hit is None:
                return None
            out.append(hit)
        return tuple(out)

    def _remember_keys(
        self,
        *,
        anchor: object,
        certs: Sequence[x509.Certificate],
        source: OcspSource | None,
        indices: tuple[int, ...],
        allow_hold: bool,
        checks: tuple[OcspCheck, ...],
    ) -> None:
        """After a full stapled check that passed, remember the verdict-cache keys it used.

        Only an all-``good`` (or allowed hold) answer is remembered, and the keys are derived
        exactly as ``check_ocsp_response`` derives them for the response the stapled set gives
        for each certificate; a key that was never stored simply misses later.
        """
        if self.mode is not RevocationMode.STAPLED or not isinstance(source, StapledOcsp):
            return
        if len(checks) != len(indices) or not all(c.ok for c in checks):
            return
        keys: list[bytes] = []
        for i in indices:
            cert, issuer = certs[i], certs[i + 1]
            der = source.response_for(cert, issuer)
            if der is None or len(der) > MAX_OCSP_RESPONSE_BYTES:
                return
            keys.append(
                OcspCache.key(
                    der, cert, issuer, allow_hold=allow_hold, expected_nonce=None, max_age=None
                )
            )
        self.caches.revocation_keys.put(source, anchor, allow_hold, indices, tuple(keys))


@dataclass(frozen=True)
class _Context:
    """The inputs every device shares."""

    at: datetime
    expected_nonce: bytes | None
    rim_source: RimSource | None
    mode: RevocationMode
    ocsp_source: OcspSource | None
    allow_hold: bool
    caches: VerifierCaches


@dataclass
class _RimFetch:
    """One RIM as fetched from the source (or why not), and its verification when it was
    started ahead of its stage (``_ColdWork.start``)."""

    rim_id: str
    data: bytes | None = None
    error: RimSelectionError | InputError | VerificationError | None = None
    #: the cache's answer (looked up once), or the verification started ahead
    remembered: VerifiedRim | None = None
    verified: Deferred[VerifiedRim] | None = None


def _fetch_rim(ctx: _Context, rim_id: str) -> _RimFetch:
    """Ask the source for one RIM. A source that cannot answer (an ambiguous id, a bad file, a
    RIM service that is unreachable or answers nonsense: ``VerificationError``, e.g.
    ``agent.rim_fetch.RimFetchError``) fails this device's RIM check with its reason; it must
    not abort the verification of the whole evidence set."""
    try:
        data = ctx.rim_source.rim_bytes(rim_id) if ctx.rim_source is not None else None
    except (RimSelectionError, InputError, VerificationError) as exc:
        return _RimFetch(rim_id, error=exc)
    return _RimFetch(rim_id, data=data)


@dataclass
class _RimPlan:
    """The RIMs a device needs, named from its signed report and fetched, in stage order.

    ``error`` is the RimSelectionError of the first id that could not be made; the RIMs after
    it are None, exactly those the sequential stages would not have reached.
    """

    driver: _RimFetch | None = None
    vbios: _RimFetch | None = None
    error: RimSelectionError | None = None

    def fetched(self) -> tuple[_RimFetch, ...]:
        return tuple(f for f in (self.driver, self.vbios) if f is not None)


def _plan_rims(ctx: _Context, kind: DeviceKind, arch: Arch | None, opaque: OpaqueData) -> _RimPlan:
    """Name and fetch the device's RIMs, in the order the RIM stages ask the source."""
    plan = _RimPlan()
    try:
        if kind is DeviceKind.GPU:
            plan.driver = _fetch_rim(
                ctx,
                driver_rim_id(
                    arch=arch.value if arch else "",
                    chip_info=opaque.chip_info,
                    driver_version=opaque.driver_version or "",
                ),
            )
            vbios_id = vbios_rim_id(
                project=opaque.project or "",
                project_sku=opaque.project_sku or "",
                chip_sku=opaque.chip_sku or "",
                vbios_version=opaque.vbios_version or "",
            )
        else:
            vbios_id = switch_bios_rim_id(bios_version=opaque.vbios_version or "")
        plan.vbios = _fetch_rim(ctx, vbios_id)
    except RimSelectionError as exc:
        plan.error = exc
    return plan


def _rim_stage(
    dev: _Device,
    ctx: _Context,
    *,
    label: str,
    claim_prefix: str,
    fetched: _RimFetch,
    expected_kind: Literal["driver", "vbios"],
    report_version: str | None,
) -> tuple[RimChecks, VerifiedRim | None]:
    """Record the fetch; parse, verify, revocation-check and version-check one RIM."""
    at, caches, rim_id, data = ctx.at, ctx.caches, fetched.rim_id, fetched.data
    if fetched.error is not None:
        dev.fail(f"{claim_prefix}-rim-fetched", rim_id, None, str(fetched.error))
        return RimChecks(rim_id=rim_id), None
    if data is None:
        dev.fail(f"{claim_prefix}-rim-fetched", rim_id, None, f"no {label} RIM available")
        return RimChecks(rim_id=rim_id), None
    try:
        if fetched.remembered is not None:
            verified = fetched.remembered
        elif fetched.verified is not None:
            verified = fetched.verified.result()
        else:
            verified = caches.rims.verify(data, at=at)
    except RimParseError as exc:
        dev.fail(f"{claim_prefix}-rim-schema-validated", True, False, f"{rim_id}: {exc}")
        return RimChecks(rim_id=rim_id, fetched=True), None
    except RimChainError as exc:
        status = _chain_status(exc)
        dev.fail(f"{claim_prefix}-rim-cert-chain", "valid", status, f"{rim_id}: {exc}")
        chain = ChainClaim(status=status, ocsp_status="not-checked")
        return RimChecks(rim_id=rim_id, fetched=True, schema_validated=True, cert_chain=chain), None
    except VerificationError as exc:
        dev.fail(f"{claim_prefix}-rim-signature-verified", True, False, f"{rim_id}: {exc}")
        chain = ChainClaim(status="valid", ocsp_status="not-checked")
        return RimChecks(rim_id=rim_id, fetched=True, schema_validated=True, cert_chain=chain), None
    rim = verified.rim
    certs = (*verified.chain.certs, verified.chain.root)
    ocsp_status, reason = dev.revocation(
        f"{label} RIM signer chain",
        verified.chain,
        certs,
        nvidia_rim_ocsp_indices(len(certs)),
        source=ctx.ocsp_source,
        at=at,
        allow_hold=ctx.allow_hold,
        claim=f"{claim_prefix}-rim-cert-chain.x-nvidia-cert-ocsp-status",
    )
    chain_claim = ChainClaim(
        status="valid",
        ocsp_status=ocsp_status,
        expiration=verified.valid_until,
        revocation_reason=reason,
    )
    if rim.kind != expected_kind:
        dev.fail(
            f"{claim_prefix}-rim-fetched", expected_kind, rim.kind, f"{rim_id} is the wrong kind"
        )
    version_ok = report_version is not None and rim.version_matches(report_version)
    if not version_ok:
        dev.fail(
            f"{claim_prefix}-rim-version-match",
            report_version,
            rim.version,
            f"{rim_id}: the RIM's colloquialVersion is not the version in the report",
        )
    available = any(m.active for m in rim.measurements)
    if not available:
        dev.fail(f"{claim_prefix}-rim-measurements-available", True, False, f"{rim_id}")
    return (
        RimChecks(
            rim_id=rim_id,
            fetched=True,
            schema_validated=True,
            signature_verified=True,
            cert_chain=chain_claim,
            version_match=version_ok and rim.kind == expected_kind,
            measurements_available=available,
        ),
        verified,
    )


def _mismatch_failure(
    dev: _Device,
    *,
    index: int,
    source: str,
    expected: tuple[bytes, ...],
    actual: bytes | None,
    why: str,
) -> None:
    dev.fail(
        f"measurement[{index}]",
        [v.hex() for v in expected],
        actual.hex() if actual is not None else None,
        f"RIM index {index} = report block {index + 1} ({source} RIM): {why}",
    )


def _memo_compare(
    dev: _Device,
    key: tuple[bytes, bytes, bytes, frozenset[int]],
    compare: Callable[[], MeasurementComparison],
) -> MeasurementComparison:
    """A comparison by its exact inputs (deterministic, so a hit is what a fresh one gives)."""
    comparison = dev.caches.comparisons.get(key)
    if comparison is None:
        comparison = compare()
        dev.caches.comparisons.put(key, comparison)
    return comparison


#: How a mismatch's source RIM is named in failure details.
_SOURCE_LABEL = {"driver": "driver", "vbios": "vbios", "bios": "BIOS"}


def _record_mismatches(dev: _Device, comparison: MeasurementComparison) -> None:
    for m in comparison.mismatches:
        _mismatch_failure(
            dev,
            index=m.rim_index,
            source=_SOURCE_LABEL[m.source],
            expected=m.expected,
            actual=m.actual,
            why=m.reason,
        )
    dev.mismatched = comparison.mismatched_indexes


def _measurements(
    dev: _Device,
    report: DeviceReport,
    driver: VerifiedRim | None,
    vbios: VerifiedRim | None,
) -> tuple[bool, bool]:
    """Compare; return (measurements match, no driver/VBIOS index conflict)."""
    skip = {NVDEC_RIM_INDEX} if report.opaque.decoded.get("NVDEC0_STATUS") == "disabled" else set()
    if report.kind is DeviceKind.SWITCH:
        if vbios is None:
            dev.fail("measres", "success", "fail", "no verified BIOS RIM to compare with")
            return False, False
        single = _memo_compare(
            dev,
            (measurement_record(report), b"", vbios.rim.raw, frozenset()),
            lambda: compare_single(report.measurements, vbios.rim, source="bios"),
        )
        _record_mismatches(dev, single)
        if single.golden_count == 0:
            dev.fail("measres", "success", "fail", "the BIOS RIM has no active measurement")
        return single.ok, True
    if driver is None or vbios is None:
        dev.fail(
            "measres", "success", "fail", "no verified driver and VBIOS RIM pair to compare with"
        )
        return False, False
    if driver.rim.kind != "driver" or vbios.rim.kind != "vbios":
        return False, False  # already recorded by the RIM stage
    comparison = _memo_compare(
        dev,
        (measurement_record(report), driver.rim.raw, vbios.rim.raw, frozenset(skip)),
        lambda: compare_measurements(
            report.measurements, driver=driver.rim, vbios=vbios.rim, skip_rim_indexes=skip
        ),
    )
    _record_mismatches(dev, comparison)
    for index in comparison.conflicts:
        dev.fail(
            "x-nvidia-gpu-vbios-index-no-conflict",
            "one RIM per index",
            f"RIM index {index}",
            "both the driver and the VBIOS RIM have an active entry for this index",
        )
    if comparison.golden_count == 0:
        dev.fail("measres", "success", "fail", "the RIMs hold no active measurement")
    return comparison.ok, not comparison.conflicts


def _finish_rim(begun: Deferred[Callable[[], VerifiedRim]]) -> VerifiedRim:
    return begun.result()()


class _ColdWork:
    """A device's expensive checks, started ahead where the caches do not answer them.

    The device chain (4 link signatures), the report signature, each RIM not yet verified
    (parse, signer chain, XML-DSig) and, in ``stapled`` mode, the OCSP responses of the device
    chain and of each RIM signer chain depend on nothing the pipeline decides in between: each
    is a pure function of its inputs. So the signature checks go to the shared pool (they
    release the GIL) while this thread does what holds it, parsing both RIMs and running
    signxml on them: the device chain's links and its three OCSP responses as soon as the
    evidence is read, each RIM's signer chain and then its OCSP responses as soon as the RIM
    is parsed (its signer chain names the certificates). The pipeline reads each
    outcome (value or exception) at the step where it used to compute it, so every failure is
    recorded in the same order with the same text as before; OCSP verdicts are still asked
    for, looked up in the verdict cache and remembered chain by chain in index order
    (``OcspPrefetch``). With nothing cold but the report signature (warm caches) nothing is
    offered to the pool and no Deferred is made: the pipeline then runs as it always did.
    """

    def __init__(
        self, evidence: DeviceEvidence, ctx: _Context, report: DeviceReport, dev: _Device
    ) -> None:
        self._ctx, self._evidence, self._report, self._dev = ctx, evidence, report, dev
        self._chain_hit = ctx.caches.device_chain_remembered(evidence.chain, ctx.at)
        self._chain: Deferred[VerifiedChain] | None = None
        self._signature: Deferred[None] | None = None

    def _ocsp_prefetch(self) -> OcspPrefetch | None:
        """Where stapled OCSP checks can start ahead: a ``StapledOcsp`` (pure) in stapled mode.
        An online source fetches over the network, so it is asked at its step only."""
        ctx = self._ctx
        if ctx.mode is not RevocationMode.STAPLED or not isinstance(ctx.ocsp_source, StapledOcsp):
            return None
        return OcspPrefetch(
            ctx.ocsp_source, at=ctx.at, allow_hold=ctx.allow_hold, cache=ctx.caches.ocsp
        )

    def start(self, rims: _RimPlan) -> None:
        caches, at, chain = self._ctx.caches, self._ctx.at, self._evidence.chain
        cold_rims: list[_RimFetch] = []
        for fetched in rims.fetched():
            if fetched.data is None:
                continue
            fetched.remembered = caches.rims.remembered(fetched.data, at=at)
            if fetched.remembered is None:
                cold_rims.append(fetched)
        if not cold_rims and self._chain_hit is not None:
            return  # warm: only the report signature, checked at its step
        # The device chain's link signatures go to the pool first, then its OCSP response
        # checks; this thread does the RIMs' Python work (parse, signxml) meanwhile, each RIM's
        # signer chain and then its OCSP checks going to the pool behind them, then the report
        # signature, the first outcome this thread needs that the pool may not have started by
        # then (it then checks it itself, alongside the pool). Outcomes are read at their own
        # steps.
        prefetch = self._dev.prefetched = self._ocsp_prefetch()
        if self._chain_hit is None:
            self._chain = offer(Deferred(partial(caches.device_chain, chain, at)))
        if prefetch is not None and len(chain) == DEVICE_CHAIN_LENGTH:
            indices = nvidia_device_ocsp_indices(len(chain))
            if self._chain_hit is None or self._revocation_unknown(self._chain_hit, indices):
                prefetch.start(chain, indices)
        on_parsed = partial(self._rim_parsed, prefetch) if prefetch is not None else None
        for fetched in cold_rims:
            assert fetched.data is not None
            begun = Deferred(partial(caches.rims.begin, fetched.data, at=at, on_parsed=on_parsed))
            begun.run_here()  # a RimParseError is kept, and raised at the RIM's stage
            fetched.verified = Deferred(partial(_finish_rim, begun))
        self._signature = offer(
            Deferred(partial(verify_signature, self._report, chain[0]), leaf=True)
        )

    def _revocation_unknown(self, anchor: VerifiedChain, indices: tuple[int, ...]) -> bool:
        """True unless this stapled set answered this verified chain before (its verdicts are
        then read straight from the verdict cache: nothing to start)."""
        source = self._ctx.ocsp_source
        assert isinstance(source, StapledOcsp)
        return (
            self._ctx.caches.revocation_keys.get(source, anchor, self._ctx.allow_hold, indices)
            is None
        )

    def _rim_parsed(self, prefetch: OcspPrefetch, rim: Rim) -> None:
        """Start the OCSP checks of a freshly parsed RIM's signer chain: the chain its RIM stage
        will check is ``(*rim.signer_chain, RIM root)``, the indexes NVIDIA's."""
        certs = (*rim.signer_chain, self._ctx.caches.rims.root)
        if len(certs) >= 2:
            prefetch.start(certs, nvidia_rim_ocsp_indices(len(certs)))

    def device_chain(self) -> VerifiedChain:
        if self._chain_hit is not None:
            return self._chain_hit
        if self._chain is not None:
            return self._chain.result()
        return self._ctx.caches.device_chain(self._evidence.chain, self._ctx.at)

    def signature(self) -> None:
        if self._signature is not None:
            self._signature.result()
        else:
            verify_signature(self._report, self._evidence.chain[0])


def _verify_one(
    evidence: DeviceEvidence, ctx: _Context
) -> tuple[DeviceResult, DeviceReport | None]:
    at, expected_nonce, caches = ctx.at, ctx.expected_nonce, ctx.caches
    dev = _Device(evidence, ctx.mode, caches)
    kind: DeviceKind | None = evidence.arch.kind if evidence.arch is not None else None
    arch: Arch | None = evidence.arch
    prefix_guess = "x-nvidia-switch" if kind is DeviceKind.SWITCH else "x-nvidia-gpu"
    arch_ok = False
    try:
        arch = resolve_arch(evidence)
        kind = arch.kind
        arch_ok = True
    except DeviceCheckError as exc:
        dev.fail(f"{prefix_guess}-arch-check", True, False, str(exc))
    p = "x-nvidia-switch" if kind is DeviceKind.SWITCH else "x-nvidia-gpu"

    def finish(
        checks: DeviceChecks | None, report: DeviceReport | None
    ) -> tuple[DeviceResult, DeviceReport | None]:
        claims = device_claims(checks) if checks is not None else {}
        if dev.failures:
            status = Status.CONTRAINDICATED
        elif dev.warnings:
            status = Status.WARNING
        else:
            status = Status.AFFIRMING
        result = DeviceResult(
            index=evidence.index,
            arch=arch.value if arch is not None else None,
            kind=kind,
            status=status,
            claims=claims,
            failures=tuple(dev.failures),
            warnings=tuple(dev.warnings),
            mismatched_rim_indexes=dev.mismatched,
            ocsp=tuple(dev.ocsp),
        )
        return result, report

    if kind is None:
        return finish(None, None)

    # 2. parse
    try:
        report = caches.reports.parse(evidence.report_bytes, kind)
    except ReportParseError as exc:
        dev.fail(f"{p}-attestation-report-parsed", True, False, str(exc))
        return finish(DeviceChecks(kind=kind, arch_check=arch_ok), None)
    opaque = report.opaque
    leaf = evidence.chain[0]
    cold = _ColdWork(evidence, ctx, report, dev)
    rims = _plan_rims(ctx, kind, arch, opaque)
    cold.start(rims)

    # 3. + 4. device chain and its revocation
    chain: VerifiedChain | None = None
    chain_claim = NOT_CHECKED_CHAIN
    try:
        chain = cold.device_chain()
    except ChainError as exc:
        status = _chain_status(exc)
        dev.fail(f"{p}-attestation-report-cert-chain", "valid", status, str(exc))
        chain_claim = ChainClaim(status=status, ocsp_status="not-checked")
    if chain is not None:
        ocsp_status, reason = dev.revocation(
            "device chain",
            chain,
            chain.certs,
            nvidia_device_ocsp_indices(len(chain.certs)),
            source=ctx.ocsp_source,
            at=at,
            allow_hold=ctx.allow_hold,
            claim=f"{p}-attestation-report-cert-chain.x-nvidia-cert-ocsp-status",
        )
        chain_claim = ChainClaim(
            status="valid",
            ocsp_status=ocsp_status,
            expiration=chain.valid_until,
            revocation_reason=reason,
        )

    # 5. signature (with the leaf as given; a chain failure above already rejects the device)
    signature_ok = False
    try:
        cold.signature()
        signature_ok = True
    except DeviceCheckError as exc:
        dev.fail(f"{p}-attestation-report-signature-verified", True, False, str(exc))

    # 6. nonce
    nonce_ok = False
    if expected_nonce is None:
        dev.warnings.append(
            "nonce NOT checked: no expected nonce given, so a replayed report is not excluded"
        )
    else:
        try:
            check_nonce(report, expected_nonce)
            nonce_ok = True
        except DeviceCheckError:
            dev.fail(
                f"{p}-attestation-report-nonce-match", expected_nonce.hex(), report.nonce.hex()
            )
    if evidence.nonce_hint is not None and evidence.nonce_hint != report.nonce:
        dev.fail(
            "evidence.nonce",
            report.nonce.hex(),
            evidence.nonce_hint.hex(),
            "the evidence container names another nonce than the signed report",
        )

    # 7. FWID (the leaf's FWID and name remembered per leaf; extraction failures are not)
    brom = evidence.chain[1] if len(evidence.chain) > 1 else None
    facts = caches.leaves.get(evidence.chain)
    hwmodel = facts[1] if facts is not None else (describe(brom) if brom is not None else None)
    try:
        if facts is None:
            facts = (leaf_fwid(leaf), hwmodel)
            caches.leaves.put(evidence.chain, facts)
        fwid = compare_fwid(report, facts[0]).value
    except FwidError as exc:
        fwid = "mismatch" if exc.reason == "fwid_mismatch" else "invalid"
        dev.fail(f"{p}-attestation-report-cert-chain-fwid-match", True, False, str(exc))

    # 8. declared versions (NVML's, next to the evidence) vs signed ones
    if evidence.declared_driver_version is not None and (
        evidence.declared_driver_version.strip() != (opaque.driver_version or "")
    ):
        dev.fail("evidence.driver_version", opaque.driver_version, evidence.declared_driver_version)
    if evidence.declared_vbios_version is not None and (
        evidence.declared_vbios_version.strip().lower() != (opaque.vbios_version or "").lower()
    ):
        dev.fail("evidence.vbios_version", opaque.vbios_version, evidence.declared_vbios_version)

    # 9. RIMs (named, fetched and, when cold, begun above; their outcomes are read here)
    driver_checks, vbios_checks = RimChecks(), RimChecks()
    driver_rim: VerifiedRim | None = None
    vbios_rim: VerifiedRim | None = None
    try:
        if kind is DeviceKind.GPU:
            if rims.driver is None:
                assert rims.error is not None
                raise rims.error
            driver_checks, driver_rim = _rim_stage(
                dev,
                ctx,
                label="driver",
                claim_prefix=f"{p}-driver",
                fetched=rims.driver,
                expected_kind="driver",
                report_version=opaque.driver_version,
            )
            prefix = f"{p}-vbios"
            label = "VBIOS"
        else:
            prefix = f"{p}-bios"
            label = "switch BIOS"
        if rims.vbios is None:
            assert rims.error is not None
            raise rims.error
        vbios_checks, vbios_rim = _rim_stage(
            dev,
            ctx,
            label=label,
            claim_prefix=prefix,
            fetched=rims.vbios,
            expected_kind="vbios",
            report_version=opaque.vbios_version,
        )
    except RimSelectionError as exc:
        dev.fail(f"{p}-rim-fetched", "a RIM id from the report's fields", None, str(exc))

    # 10. measurements
    measures_ok, no_conflict = _measurements(dev, report, driver_rim, vbios_rim)

    checks = DeviceChecks(
        kind=kind,
        arch_check=arch_ok,
        parsed=True,
        nonce_match=nonce_ok,
        signature_verified=signature_ok,
        cert_chain=chain_claim,
        fwid=fwid,
        driver_version=opaque.driver_version,
        vbios_version=opaque.vbios_version,
        driver_rim=driver_checks,
        vbios_rim=vbios_checks,
        index_no_conflict=no_conflict,
        measurements_match=measures_ok,
        nonce=report.nonce.hex(),
        hwmodel=hwmodel,
        ueid=str(leaf.serial_number),
        oemid=driver_rim.rim.firmware_manufacturer_id if driver_rim is not None else None,
        revocation_mode=ctx.mode.value,
    )
    return finish(checks, report)


def _duplicate_devices(
    evidence_list: Sequence[DeviceEvidence], caches: VerifierCaches
) -> list[Failure]:
    """The same device twice would let one GPU stand in for two (``gpu.count``, a PPCIe set
    with one GPU's evidence in two slots). Keyed by ``DeviceIdentity``, never by certificate
    bytes: a leaf re-encoded with the other ECDSA signature form is still the same device.
    One failure per repeated device: ``deviceN.leaf_certificate`` when its leaf key or signed
    body was given before, else ``deviceN.device_identity`` when its identity key was."""
    failures: list[Failure] = []
    leaf_keys: dict[bytes, int] = {}
    leaf_bodies: dict[bytes, int] = {}
    identity_keys: dict[bytes, int] = {}
    for ev in evidence_list:
        if not ev.chain:
            continue
        ident = caches.identities.get(ev.chain)
        if ident is None:
            ident = DeviceIdentity.of(ev.chain)
            caches.identities.put(ev.chain, ident)
        first = leaf_keys.get(ident.leaf_key) if ident.leaf_key is not None else None
        what = "its leaf's public key"
        if first is None:
            first = leaf_bodies.get(ident.leaf_tbs)
            what = "its leaf's signed body"
        if first is not None:
            failures.append(
                Failure(
                    f"device{ev.index}.leaf_certificate",
                    "a device given once",
                    f"same leaf as device{first}",
                    f"{what} is device{first}'s",
                )
            )
        elif ident.identity_key is not None and ident.identity_key in identity_keys:
            # another leaf of a device already given (a leaf made again, another boot)
            first = identity_keys[ident.identity_key]
            failures.append(
                Failure(
                    f"device{ev.index}.device_identity",
                    "a device given once",
                    f"same device identity as device{first}",
                    f"'{describe(ev.chain[1])}' has device{first}'s public key",
                )
            )
        if ident.leaf_key is not None:
            leaf_keys.setdefault(ident.leaf_key, ev.index)
        leaf_bodies.setdefault(ident.leaf_tbs, ev.index)
        if ident.identity_key is not None:
            identity_keys.setdefault(ident.identity_key, ev.index)
    return failures


def verify_gpu_evidence(
    evidence_list: Sequence[DeviceEvidence],
    *,
    at: datetime,
    expected_nonce: bytes | None,
    rim_source: RimSource | None,
    revocation_mode: RevocationMode | str,
    ocsp_source: OcspSource | None,
    allow_hold: bool = False,
    caches: VerifierCaches | None = None,
) -> EvidenceSetResult:
    """Verify every device of an evidence set as of ``at``; never raises on bad evidence.

    Caller errors (naive ``at``, unknown revocation mode, an empty set) raise ``InputError``.
    """
    at = require_aware(at)
    try:
        mode = RevocationMode(revocation_mode)
    except ValueError:
        raise InputError(f"unknown revocation mode {revocation_mode!r}") from None
    if not evidence_list:
        raise InputError("no device evidence given")
    caches = caches if caches is not None else VerifierCaches()

    ctx = _Context(
        at=at,
        expected_nonce=expected_nonce,
        rim_source=rim_source,
        mode=mode,
        ocsp_source=ocsp_source,
        allow_hold=allow_hold,
        caches=caches,
    )
    devices: list[DeviceResult] = []
    reports: list[tuple[DeviceResult, DeviceReport | None]] = []
    for ev in evidence_list:
        result, report = _verify_one(ev, ctx)
        prefix = result.kind.value if result.kind is not None else "device"
        number = sum(1 for d in devices if d.name.startswith(prefix))
        result = replace(result, name=f"{prefix}{number}")
        devices.append(result)
        reports.append((result, report))

    failures: list[Failure] = []
    warnings: list[str] = []
    failures.extend(_duplicate_devices(evidence_list, caches))

    topology: TopologyResult | None = None
    parsed = [(r, rep) for r, rep in reports if rep is not None]
    gpus = [rep.opaque for _, rep in parsed if rep.kind is DeviceKind.GPU]
    switches = [rep.opaque for _, rep in parsed if rep.kind is DeviceKind.SWITCH]
    if switches or any(g.feature_flag is FeatureFlag.PPCIE for g in gpus):
        unparsed = len(parsed) != len(reports)
        topology = check_topology(gpus, switches)
        failures.extend(topology.failures)
        if unparsed:
            failures.append(
                Failure("topology", "every report parsed", "some did not", "topology incomplete")
            )

    if failures or any(d.status is Status.CONTRAINDICATED for d in devices):
        status = Status.CONTRAINDICATED
    elif warnings or any(d.status is Status.WARNING for d in devices):
        status = Status.WARNING
    else:
        status = Status.AFFIRMING
    return EvidenceSetResult(
        devices=tuple(devices),
        topology=topology,
        failures=tuple(failures),
        warnings=tuple(warnings),
        status=status,
        at=at,
    )
