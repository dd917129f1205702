"""Appraise a whole enclave: the CPU TEE plus every GPU and NVSwitch, under one binding.

Each device is verified (signatures, chains, revocation, reference values) and then appraised
against the policy; every failure becomes a finding with the field and both values, and a
device that fails verification is contraindicated with the reason. The composite binding ties
them together: the CPU report must carry this session's ``report_data`` and every GPU/NVSwitch
report this session's SPDM nonce, so evidence from different sessions never combines into one
affirming result.

Trust anchors are NVIDIA's, AMD's and Intel's pinned roots; a policy may add roots by SHA-256
(``roots.extra_trusted_sha256``, used by the demo's emulated hardware), and only roots listed
there are ever added.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from attest import roots
from attest.appraise.common import DeviceAppraisal, FindingCollector
from attest.appraise.snp import SNP_CATEGORIES, appraise_snp
from attest.appraise.tdx import appraise_tdx
from attest.binding import SessionBinding
from attest.bundle import DeviceEvidenceIn, EvidenceBundle, SnpEvidenceIn, TdxEvidenceIn
from attest.errors import InputError, LesseeError, ParseError
from attest.findings import Finding, Severity
from attest.nvidia.evidence import Arch, DeviceEvidence, chain_arch, parse_arch
from attest.nvidia.opaque import DeviceKind
from attest.nvidia.rim import RimCollection, RimParseCache
from attest.nvidia.rp_policy import (
    NvidiaRpPolicy,
    evaluate_device,
    evaluate_overall,
    load_nvidia_policy,
)
from attest.nvidia.verifier import (
    DeviceResult,
    EvidenceSetResult,
    VerifierCaches,
    verify_gpu_evidence,
)
from attest.nvidia.verifier import Status as VerifierStatus
from attest.policy import CpuTee, GpuPolicy, MissingRevocation, Policy
from attest.revocation.ocsp import RevocationMode, StapledOcsp
from attest.snp.report import Product, SigningKey
from attest.snp.verify import (
    AmdCrlCache,
    VerifiedSnpReport,
    held_crl_dates,
    load_amd_certificates,
    verify_snp_report,
)
from attest.tdx.collateral import parse_collateral_json
from attest.tdx.quote import parse_quote
from attest.tdx.verify import verify_quote
from attest.x509chain import ChainCache, load_pem_chain

#: Every claim a GPU or NVSwitch submodule carries falls under one of these, so a relying-party
#: policy that rejects on any claim (``hwmodel``, ``ueid``, ...) lowers a trust-vector claim too
#: (tested over the real report's claims).
GPU_CATEGORIES = {
    "instance-identity": (
        "x-nvidia-gpu-attestation-report-nonce-match",
        "gpu.nonce",
        "x-nvidia-switch-attestation-report-nonce-match",
        "eat_nonce",
        "ueid",
    ),
    "hardware": (
        "x-nvidia-gpu-attestation-report",
        "x-nvidia-switch-attestation-report",
        "x-nvidia-gpu-arch",
        "x-nvidia-switch-arch",
        "gpu.arch",
        "gpu.cc_mode",
        "gpu.count",
        "hwmodel",
        "oemid",
        "x-lessee-fwid-binding",
    ),
    "executables": (
        "measres",
        "x-nvidia-gpu-driver",
        "x-nvidia-gpu-vbios",
        "x-nvidia-switch-bios",
        "gpu.minimum",
        "secboot",
    ),
    "configuration": (
        "gpu.devtools",
        "topology",
        "device",
        "dbgstat",
        "x-nvidia-ver",
        "x-lessee-revocation-mode",
    ),
}


#: Certificate inputs (a device's PEM chain, an AMD certificate blob) an ``AppraisalContext``
#: remembers loaded, by exact bytes. One per GPU/NVSwitch and per SNP host of the fleet a broker
#: serves: 512 covers 64 eight-GPU servers. Real inputs are ~5 KiB, so ~2.5 MiB in practice;
#: a hostile flood of maximal inputs (64 KiB each) can hold at most 32 MiB per memo, and only
#: pushes good entries out (they are then loaded again), it never changes an answer.
MAX_CACHED_CERT_INPUTS = 512
#: Roots whose SHA-256 an ``AppraisalContext`` remembers: the pinned and candidate roots of one
#: installation are a handful; the bound only keeps a misuse from growing without end.
MAX_CACHED_ROOT_DIGESTS = 64
#: Verified AMD chains (VCEK/VLEK -> ASK/ASVK) the context's ChainCache keeps: one per SNP host
#: and TCB of the fleet.
MAX_CACHED_SNP_CHAINS = 512
#: Trust-anchor sets (device root, RIM root) with verifier caches of their own: a broker has
#: at most a few (pinned and emulation roots); an audited log names its roots per entry.
MAX_CACHED_ANCHOR_SETS = 8
#: Stapled OCSP sets (every response of one bundle) kept built. A server's agent refreshes its
#: GPUs' answers together, so a broker sees one set per server per refresh period.
MAX_CACHED_STAPLED_SETS = 64
#: Only sets up to this size are kept (8 GPUs x 7 answers of ~1.5 KiB is ~84 KiB), so the memo
#: holds at most 64 x 256 KiB = 16 MiB; a larger set is built per bundle as before.
MAX_CACHED_STAPLED_SET_BYTES = 256 * 1024
#: AMD CRLs whose lastUpdate an ``AppraisalContext`` remembers (``crl_last_update``): one per
#: key kind and product AMD publishes, and the evidence's; at most 256 KiB each (MAX_CRL_BYTES).
MAX_CACHED_CRL_DATES = 64
#: A declared architecture that is no known one is quoted in its finding up to this length.
MAX_ARCH_REPR = 40

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Memo(Generic[K, V]):
    """A bounded map for results that depend only on their key (least recently used out first).

    Only successful results are ever put (a load that raised leaves nothing behind), and the
    values are immutable (certificate tuples, parsed facts), so sharing one between threads and
    requests is safe. Thread-safe; ``hits``/``misses`` count lookups.
    """

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return hit
            self.misses += 1
        value = make()  # may raise: then nothing is stored
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def _sha256_uncached(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


_ROOT_DIGESTS: _Memo[x509.Certificate, str] = _Memo(MAX_CACHED_ROOT_DIGESTS)


def _sha256(cert: x509.Certificate) -> str:
    """SHA-256 of the DER, remembered per certificate (``cryptography`` compares and hashes
    certificates by their DER, so a hit is the digest of the very same bytes)."""
    return _ROOT_DIGESTS.get_or_make(cert, lambda: _sha256_uncached(cert))


@dataclass(frozen=True)
class TrustAnchors:
    """Roots used for one appraisal. ``extra`` certificates are used only when the policy lists
    their SHA-256 (callers pass candidates, e.g. the emulation roots of this installation)."""

    nvidia_device_root: x509.Certificate = field(default_factory=roots.nvidia_device_root)
    nvidia_rim_root: x509.Certificate = field(default_factory=roots.nvidia_rim_root)

    @classmethod
    def for_policy(
        cls, policy: Policy, *, candidates: Mapping[str, x509.Certificate] | None = None
    ) -> TrustAnchors:
        """Default roots, replaced by a candidate only where the policy pins that candidate.

        ``candidates`` maps a role (``nvidia_device_root``, ``nvidia_rim_root``) to a certificate.
        """
        chosen: dict[str, x509.Certificate] = {}
        for role, cert in (candidates or {}).items():
            if role not in ("nvidia_device_root", "nvidia_rim_root"):
                raise InputError(f"unknown trust anchor role {role!r}")
            if _sha256(cert) in policy.roots.extra_trusted_sha256:
                chosen[role] = cert
        return cls(**chosen)


@dataclass
class AppraisalContext:
    """Long-lived state for a broker: broker-side RIMs, candidate roots, and every cache.

    A broker appraises the same certificates, RIMs and OCSP answers again and again (only the
    reports change per session), so the context remembers, each keyed by exact bytes, bounded,
    thread-safe, and never holding a failure:

    * ``VerifierCaches`` per trust-anchor set (verified device/RIM chains and links, verified
      RIMs, OCSP verdicts, comparisons: each answered only inside its validity window);
    * ``rim_parses``: parsed RIMs (``RimCollection`` is rebuilt per bundle from them);
    * ``pem_chains``: loaded device PEM chains, with the architecture the leaf names; the same
      certificate objects coming back lets the verifier's identity memos hit too;
    * ``amd_certificates``: loaded AMD certificate inputs (VCEK DER, ASK/ARK PEM);
    * ``snp_chains``: verified AMD chains (keyed by chain and root DER; valid only inside the
      window in which every certificate is);
    * ``snp_crls``: AMD CRLs that passed (keyed by the SHA-256 of the CRL, the ARK and the
      intermediate; valid only between the CRL's lastUpdate and nextUpdate);
    * ``crl_updates``: the lastUpdate of AMD CRLs that passed (by exact bytes), whose age the
      policy's ``freshness.max_collateral_age_seconds`` bounds.
    """

    rims: Sequence[bytes] = ()
    candidates: Mapping[str, x509.Certificate] = field(default_factory=dict)
    amd_extra_arks: Sequence[x509.Certificate] = ()
    #: AMD CRLs the broker holds itself, by (signing key kind, product): checked instead of the
    #: evidence's CRL for a report of that kind and product (``verify_snp_report``'s
    #: ``held_crls``), since the host could send the other, equally valid, list.
    amd_crls: Mapping[tuple[SigningKey, Product], bytes] = field(default_factory=dict)
    _caches: OrderedDict[tuple[str, str], VerifierCaches] = field(
        default_factory=OrderedDict, repr=False
    )
    rim_parses: RimParseCache = field(default_factory=RimParseCache, repr=False)
    pem_chains: _Memo[bytes, tuple[tuple[x509.Certificate, ...], Arch | None]] = field(
        default_factory=lambda: _Memo(MAX_CACHED_CERT_INPUTS), repr=False
    )
    amd_certificates: _Memo[bytes, tuple[x509.Certificate, ...]] = field(
        default_factory=lambda: _Memo(MAX_CACHED_CERT_INPUTS), repr=False
    )
    snp_chains: ChainCache = field(
        default_factory=lambda: ChainCache(MAX_CACHED_SNP_CHAINS), repr=False
    )
    snp_crls: AmdCrlCache = field(default_factory=AmdCrlCache, repr=False)
    stapled_sets: _Memo[tuple[bytes, ...], StapledOcsp] = field(
        default_factory=lambda: _Memo(MAX_CACHED_STAPLED_SETS), repr=False
    )
    crl_updates: _Memo[bytes, datetime] = field(
        default_factory=lambda: _Memo(MAX_CACHED_CRL_DATES), repr=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def sharing_caches(
        self,
        *,
        rims: Sequence[bytes],
        candidates: Mapping[str, x509.Certificate],
        amd_extra_arks: Sequence[x509.Certificate],
        amd_crls: Mapping[tuple[SigningKey, Product], bytes] | None = None,
    ) -> AppraisalContext:
        """A context with other inputs (an audited entry's archived RIMs, roots and held AMD
        CRLs; ``amd_crls`` None: none held) that shares every cache of this one. Safe: each
        cache is keyed by exact bytes and trust anchors, so a hit is what a fresh verification
        with the new inputs would give."""
        return dataclasses.replace(
            self,
            rims=tuple(rims),
            candidates=dict(candidates),
            amd_extra_arks=tuple(amd_extra_arks),
            amd_crls=dict(amd_crls or {}),
        )

    def caches_for(self, anchors: TrustAnchors) -> VerifierCaches:
        """The caches for one trust-anchor set (made once, under a lock: two threads asking
        at once get the same caches, so neither one's work is lost)."""
        key = (_sha256(anchors.nvidia_device_root), _sha256(anchors.nvidia_rim_root))
        with self._lock:
            caches = self._caches.get(key)
            if caches is None:
                caches = VerifierCaches(
                    device_root=anchors.nvidia_device_root, rim_root=anchors.nvidia_rim_root
                )
                self._caches[key] = caches
                # The least recently used set goes: the audit replay takes each entry's roots
                # from the log, which a hostile one can vary per entry (a miss only starts
                # with empty caches again).
                while len(self._caches) > MAX_CACHED_ANCHOR_SETS:
                    self._caches.popitem(last=False)
            else:
                self._caches.move_to_end(key)
            return caches

    def load_pem_chain(self, data: bytes) -> tuple[tuple[x509.Certificate, ...], Arch | None]:
        """``load_pem_chain`` and ``chain_arch``, by exact bytes; InputError is not cached."""

        def load() -> tuple[tuple[x509.Certificate, ...], Arch | None]:
            chain = load_pem_chain(data)
            return chain, chain_arch(chain)

        return self.pem_chains.get_or_make(bytes(data), load)

    def load_amd_certificates(self, data: bytes) -> tuple[x509.Certificate, ...]:
        """``load_amd_certificates``, by exact bytes; InputError is not cached."""
        return self.amd_certificates.get_or_make(bytes(data), lambda: load_amd_certificates(data))

    def crl_last_update(self, crl: bytes) -> datetime:
        """An AMD CRL's lastUpdate, by exact bytes (only for a CRL ``verify_snp_report``
        accepted, so it parses; a failure is not kept)."""
        return self.crl_updates.get_or_make(bytes(crl), lambda: held_crl_dates(crl)[0])

    def stapled(self, responses: Sequence[bytes]) -> StapledOcsp:
        """``StapledOcsp(responses)``, the same object again for the same responses in the same
        order (immutable once built, so sharing it is safe; the verifier's revocation memo
        recognises it). A malformed set raises as before and is not kept."""
        key = tuple(bytes(r) for r in responses)
        if sum(len(r) for r in key) > MAX_CACHED_STAPLED_SET_BYTES:
            return StapledOcsp(key)
        return self.stapled_sets.get_or_make(key, lambda: StapledOcsp(key))


def _verification_failed(name: str, field_name: str, exc: LesseeError) -> DeviceAppraisal:
    reason = getattr(exc, "reason", type(exc).__name__)
    return DeviceAppraisal(
        name,
        (Finding(name, field_name, "verified", reason, Severity.REJECT, str(exc)),),
        {"hardware": (field_name,)},
    )


#: ``appraise_snp``'s categories with the CRL finding under "hardware": the AMD chain that
#: vouches for the chip is what revocation is about.
_SNP_CATEGORIES_WITH_REVOCATION = {
    **SNP_CATEGORIES,
    "hardware": (*SNP_CATEGORIES["hardware"], "snp.revocation"),
}


#: ``appraise_snp``'s categories with the CRL's age under "hardware", as TDX's collateral age.
_SNP_CATEGORIES_WITH_COLLATERAL = {
    **SNP_CATEGORIES,
    "hardware": (*SNP_CATEGORIES["hardware"], "snp.collateral"),
}


def _snp_crl_age_finding(
    verified: VerifiedSnpReport,
    cpu: SnpEvidenceIn,
    policy: Policy,
    at: datetime,
    ctx: AppraisalContext,
) -> Finding | None:
    """A REJECT when the AMD CRL the report was checked against is older than the policy's
    ``freshness.max_collateral_age_seconds`` (its lastUpdate, judged at ``at``), as for TDX's
    collateral; None otherwise. The list is the one ``verify_snp_report`` used: the broker's
    own for the report's key kind and product when it holds one, else the evidence's."""
    held = ctx.amd_crls.get((verified.signing_key_kind, verified.product))
    crl = held if held is not None else cpu.crl
    if crl is None:
        return None
    issued = ctx.crl_last_update(crl)
    limit = timedelta(seconds=policy.freshness.max_collateral_age_seconds)
    age = at - issued
    if age <= limit:
        return None
    return Finding(
        "cpu0",
        "snp.collateral.crl.age",
        f"<= {int(limit.total_seconds())} s",
        f"{int(age.total_seconds())} s",
        Severity.REJECT,
        f"the AMD CRL ({'held by the broker' if held is not None else 'from the evidence'})"
        f" was issued {issued.isoformat()}",
    )


def _snp_revocation_finding(policy: Policy) -> Finding:
    """The finding for SNP evidence without AMD's CRL: the ASK/ASVK may have been revoked and
    nothing says otherwise. A REJECT by default, a WARN only where the policy accepts missing
    revocation data (``missing_revocation: warn``, as for the GPUs' missing OCSP answers)."""
    warn = policy.missing_revocation is MissingRevocation.WARN
    return Finding(
        "cpu0",
        "snp.revocation",
        "checked",
        "missing",
        Severity.WARN if warn else Severity.REJECT,
        "no AMD CRL came with the SEV-SNP evidence: the ASK/ASVK's revocation was not checked",
    )


def _appraise_cpu(
    bundle: EvidenceBundle,
    binding: SessionBinding,
    policy: Policy,
    at: datetime,
    ctx: AppraisalContext,
) -> DeviceAppraisal:
    cpu = bundle.cpu
    if cpu is None:
        return DeviceAppraisal(
            "cpu0",
            (
                Finding(
                    "cpu0",
                    "cpu.evidence",
                    [t.value for t in policy.cpu_tees],
                    None,
                    detail="no CPU TEE evidence",
                ),
            ),
            {"hardware": ("cpu.",)},
        )
    if isinstance(cpu, SnpEvidenceIn):
        if CpuTee.SNP not in policy.cpu_tees or policy.snp is None:
            return DeviceAppraisal(
                "cpu0",
                (Finding("cpu0", "cpu.tee", [t.value for t in policy.cpu_tees], "snp"),),
                {"hardware": ("cpu.",)},
            )
        try:
            certs = tuple(c for blob in cpu.certificates for c in ctx.load_amd_certificates(blob))
            extra = [
                a for a in ctx.amd_extra_arks if _sha256(a) in policy.roots.extra_trusted_sha256
            ]
            verified = verify_snp_report(
                cpu.report,
                certs,
                at=at,
                crl=cpu.crl,
                held_crls=ctx.amd_crls,
                extra_arks=extra,
                cache=ctx.snp_chains,
                crl_cache=ctx.snp_crls,
            )
        except LesseeError as exc:
            # A CRL that is there but fails (signature, issuer, window, ASK revoked) lands here.
            return _verification_failed("cpu0", "snp.verification", exc)
        appraisal = appraise_snp(verified, policy.snp, binding)
        if verified.revocation_checked:
            age = _snp_crl_age_finding(verified, cpu, policy, at, ctx)
            if age is None:
                return appraisal
            return dataclasses.replace(
                appraisal,
                findings=(*appraisal.findings, age),
                categories=_SNP_CATEGORIES_WITH_COLLATERAL,
            )
        return dataclasses.replace(
            appraisal,
            findings=(*appraisal.findings, _snp_revocation_finding(policy)),
            categories=_SNP_CATEGORIES_WITH_REVOCATION,
        )
    assert isinstance(cpu, TdxEvidenceIn)
    if CpuTee.TDX not in policy.cpu_tees or policy.tdx is None:
        return DeviceAppraisal(
            "cpu0",
            (Finding("cpu0", "cpu.tee", [t.value for t in policy.cpu_tees], "tdx"),),
            {"hardware": ("cpu.",)},
        )
    try:
        quote = parse_quote(cpu.quote, allow_trailing_zero_padding=True)
        collateral = parse_collateral_json(cpu.collateral_json)
        tdx = verify_quote(quote, collateral, at=at)
    except LesseeError as exc:
        return _verification_failed("cpu0", "tdx.verification", exc)
    return appraise_tdx(
        tdx,
        policy.tdx,
        binding,
        max_collateral_age=timedelta(seconds=policy.freshness.max_collateral_age_seconds),
    )


#: NVIDIA driver versions are dotted decimal ("535.104.05"); VBIOS versions are dotted hex
#: (``opaque.gpu_vbios_text``: "96.00.88.00.11", upper-cased in the claims). Bounded so that
#: attacker-chosen report text never reaches ``int`` unchecked or makes huge numbers.
_DRIVER_VERSION = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9}){0,7}")
_VBIOS_VERSION = re.compile(r"[0-9A-Fa-f]{1,8}(?:\.[0-9A-Fa-f]{1,8}){0,7}")


def _dotted(text: object, pattern: re.Pattern[str], base: int, what: str) -> tuple[int, ...]:
    if not isinstance(text, str) or pattern.fullmatch(text) is None:
        notation = "decimal" if base == 10 else "hex"
        raise ParseError(f"not a {what} (1 to 8 dot-separated {notation} numbers)")
    return tuple(int(part, base) for part in text.split("."))


def driver_version_tuple(text: object) -> tuple[int, ...]:
    """A driver version's parts as decimal numbers; ParseError for anything else.

    Decimal, never hex: "535.104.05" is 535, 104, 5.
    """
    return _dotted(text, _DRIVER_VERSION, 10, "driver version")


def vbios_version_tuple(text: object) -> tuple[int, ...]:
    """A VBIOS version's parts as hex numbers (always hex: "96.00.1a" is 0x96, 0, 0x1a), so
    "96.00.1a.00.01" is below "96.00.20.00.01"; ParseError for anything else."""
    return _dotted(text, _VBIOS_VERSION, 16, "VBIOS version")


def _at_least(actual: tuple[int, ...], minimum: tuple[int, ...]) -> bool:
    """Compare with the shorter version padded by zeros ("535" equals "535.0")."""
    width = max(len(actual), len(minimum))
    pad = (0,) * width
    return (actual + pad)[:width] >= (minimum + pad)[:width]


def _minimum_version_finding(
    c: FindingCollector,
    field_name: str,
    minimum: str,
    actual: object,
    parse: Callable[[object], tuple[int, ...]],
) -> None:
    """A REJECT finding unless ``actual`` parses and is at least ``minimum``.

    ``actual`` comes from the parsed report even when its signature failed, so it is
    attacker-chosen text: unparseable is a finding, never an exception (``appraise_bundle``
    never raises for bad evidence).
    """
    expected = f">= {minimum}"
    try:
        floor = parse(minimum)
    except ParseError as exc:
        c.expect(False, field_name, expected, actual, detail=f"the policy's minimum: {exc}")
        return
    if actual is None:
        c.expect(False, field_name, expected, None, detail="the report carries no version")
        return
    try:
        version = parse(actual)
    except ParseError as exc:
        c.expect(False, field_name, expected, actual, detail=f"the report's version: {exc}")
        return
    c.expect(_at_least(version, floor), field_name, expected, actual)


#: Failures that ``gpu.unsafe_skip_rim_match`` turns into warnings: the measurements do not
#: match signed RIMs, or no usable RIM was there to match (``measres``, ``measurement[k]``, the
#: driver/VBIOS index conflict, a RIM not fetched, of another version or kind, or without active
#: measurements). A RIM that does not parse is dropped when the collection is built and so
#: counts as not fetched (a warning here too); one that parses but fails its signer chain (or
#: its OCSP) or signature stays a REJECT, as does every failure of the report itself
#: (signature, chain, nonce, FWID, arch).
_SKIPPABLE_RIM_MATCH = re.compile(
    r"measres"
    r"|measurement\[[0-9]+\]"
    r"|x-nvidia-(?:gpu|switch)-vbios-index-no-conflict"
    r"|x-nvidia-(?:gpu|switch)(?:-[a-z]+)?-rim-(?:fetched|version-match|measurements-available)"
)


def _gpu_policy_findings(
    result: DeviceResult, gpu: GpuPolicy, bundle: EvidenceBundle, policy: Policy
) -> list[Finding]:
    c = FindingCollector(result.name)
    for f in result.failures:
        severity = Severity.REJECT
        if (
            policy.missing_revocation is MissingRevocation.WARN
            and f.actual == "missing"
            and "cert-chain" in f.field
        ):
            severity = Severity.WARN
        if gpu.unsafe_skip_rim_match and _SKIPPABLE_RIM_MATCH.fullmatch(f.field):
            severity = Severity.WARN
        c.findings.append(Finding(result.name, f.field, f.expected, f.actual, severity, f.detail))
    for w in result.warnings:
        c.findings.append(Finding(result.name, "warning", None, None, Severity.WARN, w))
    if result.name.startswith("gpu"):
        c.expect(result.arch in gpu.architectures, "gpu.arch", list(gpu.architectures), result.arch)
        driver = result.claims.get("x-nvidia-gpu-driver-version")
        vbios = result.claims.get("x-nvidia-gpu-vbios-version")
        if gpu.minimum_driver_version is not None:
            _minimum_version_finding(
                c,
                "gpu.minimum_driver_version",
                gpu.minimum_driver_version,
                driver,
                driver_version_tuple,
            )
        if gpu.minimum_vbios_version is not None:
            _minimum_version_finding(
                c,
                "gpu.minimum_vbios_version",
                gpu.minimum_vbios_version,
                vbios,
                vbios_version_tuple,
            )
        c.expect(
            gpu.unsafe_allow_cc_off or bundle.cc_mode_on,
            "gpu.cc_mode",
            "on",
            "on" if bundle.cc_mode_on else "off",
        )
        c.expect(
            gpu.unsafe_allow_devtools or not bundle.devtools_on,
            "gpu.devtools",
            "off",
            "on" if bundle.devtools_on else "off",
        )
    return c.findings


def _to_device_evidence(
    items: Sequence[DeviceEvidenceIn],
    start: int,
    ctx: AppraisalContext,
    unknown_arch: dict[int, str],
    certified: dict[int, DeviceKind | None],
) -> list[DeviceEvidence]:
    """The verifier's evidence, with the architecture the bundle *declares*.

    The verifier compares the declared architecture with the leaf certificate's
    (``resolve_arch``, gpu-verifier.md check 1), so a bundle that calls a Hopper report
    ``BLACKWELL`` is contraindicated. A declared name that is no known architecture is put in
    ``unknown_arch`` (evidence index -> a bounded repr) to become a REJECT finding on that
    device; its evidence goes on with no declared arch so the rest of it is still checked.
    ``certified`` gets the kind each leaf certificate names (evidence index -> kind, None when
    it names no known architecture): what the device is, whatever the bundle calls it.
    """
    out = []
    for i, d in enumerate(items, start):
        chain, leaf_arch = ctx.load_pem_chain(d.certificate_chain_pem)
        certified[i] = leaf_arch.kind if leaf_arch is not None else None
        declared: Arch | None
        try:
            declared = parse_arch(d.arch, f"evidence[{i}]")
        except InputError:
            declared = None
            unknown_arch[i] = repr(d.arch)[:MAX_ARCH_REPR]
        out.append(DeviceEvidence(index=i, arch=declared, report_bytes=d.report, chain=chain))
    return out


def _appraise_devices(
    bundle: EvidenceBundle,
    binding: SessionBinding,
    policy: Policy,
    at: datetime,
    ctx: AppraisalContext,
) -> tuple[list[DeviceAppraisal], list[Finding]]:
    gpu = policy.gpu
    findings: list[Finding] = []
    if not bundle.gpus:
        if gpu.count is not None:
            findings.append(Finding("enclave", "gpu.count", gpu.count, 0))
        findings.append(Finding("enclave", "gpu.count", ">= 1", 0, detail="no GPU evidence"))
        return [], findings
    unknown_arch: dict[int, str] = {}
    certified: dict[int, DeviceKind | None] = {}
    try:
        evidence = _to_device_evidence(
            bundle.gpus, 0, ctx, unknown_arch, certified
        ) + _to_device_evidence(bundle.switches, len(bundle.gpus), ctx, unknown_arch, certified)
    except InputError as exc:
        findings += _declared_count_findings(bundle, gpu)
        findings.append(Finding("enclave", "gpu.evidence", "readable certificate chains", str(exc)))
        return [], findings
    stapled_rims = [r for d in (*bundle.gpus, *bundle.switches) for r in d.rims]
    rims = (stapled_rims if gpu.stapled_rims else []) + list(ctx.rims)
    ocsp = [o for d in (*bundle.gpus, *bundle.switches) for o in d.ocsp_responses]
    try:
        stapled = ctx.stapled(ocsp)
    except InputError as exc:
        # A finding like an unreadable chain, not an exception: the broker has already spent
        # the nonce, and only a result records the decision in the log.
        findings += _declared_count_findings(bundle, gpu)
        findings.append(Finding("enclave", "gpu.ocsp", "well-formed stapled OCSP", str(exc)))
        return [], findings
    anchors = TrustAnchors.for_policy(policy, candidates=ctx.candidates)
    result = verify_gpu_evidence(
        evidence,
        at=at,
        expected_nonce=binding.gpu_nonce,
        rim_source=RimCollection(rims, parse_cache=ctx.rim_parses),
        revocation_mode=RevocationMode.STAPLED,
        ocsp_source=stapled,
        allow_hold="certificate_hold" in gpu.allowed_ocsp_statuses,
        caches=ctx.caches_for(anchors),
    )
    findings += _device_set_findings(result, certified, gpu)
    for f in result.failures:
        findings.append(
            Finding("enclave", f.field, f.expected, f.actual, Severity.REJECT, f.detail)
        )
    devices = []
    rp = _nvidia_rp_policies(gpu)
    for d in result.devices:
        device_findings = _gpu_policy_findings(d, gpu, bundle, policy)
        declared = DeviceKind.GPU if d.index < len(bundle.gpus) else DeviceKind.SWITCH
        leaf_kind = certified.get(d.index)
        if leaf_kind is not None and leaf_kind is not declared:
            listed = "gpus" if declared is DeviceKind.GPU else "switches"
            device_findings.insert(
                0,
                Finding(
                    d.name,
                    "device.declared_kind",
                    leaf_kind.value,
                    declared.value,
                    Severity.REJECT,
                    f"the bundle lists it under {listed}; its leaf certificate is a"
                    f" {leaf_kind.value}'s",
                ),
            )
        if d.index in unknown_arch:
            prefix = "x-nvidia-switch" if d.name.startswith("switch") else "x-nvidia-gpu"
            device_findings.insert(
                0,
                Finding(
                    d.name,
                    f"{prefix}-arch-check",
                    [a.value for a in Arch],
                    unknown_arch[d.index],
                    Severity.REJECT,
                    "the evidence declares an architecture that is not known",
                ),
            )
        kind = "switch" if d.name.startswith("switch") else "gpu"
        if kind in rp:
            device_findings += evaluate_device(rp[kind], d.name, d.claims)
        devices.append(
            DeviceAppraisal(d.name, tuple(device_findings), GPU_CATEGORIES, dict(d.claims))
        )
    # NVIDIA's x-nvidia-overall-att-result: every device and the set itself (duplicates,
    # topology) passed with nothing left unchecked; a WARNING (an allowed hold) is not a pass
    overall_ok = result.status is VerifierStatus.AFFIRMING
    for pol in rp.values():
        findings += evaluate_overall(pol, all_devices_passed=overall_ok)
    return devices, findings


def _declared_count_findings(bundle: EvidenceBundle, gpu: GpuPolicy) -> list[Finding]:
    """The policy's counts on the bundle's own lists, for a bundle rejected before anything
    was verified (unreadable chains or OCSP answers): there is nothing attested to count, and
    these are the findings such a bundle has always had (the auditor's replay compares them)."""
    findings: list[Finding] = []
    if gpu.count is not None and len(bundle.gpus) != gpu.count:
        findings.append(Finding("enclave", "gpu.count", gpu.count, len(bundle.gpus)))
    if gpu.switch_count is not None and len(bundle.switches) != gpu.switch_count:
        findings.append(
            Finding("enclave", "gpu.switch_count", gpu.switch_count, len(bundle.switches))
        )
    if gpu.ppcie_topology_required and not bundle.switches:
        findings.append(
            Finding("enclave", "topology", "PPCIe set with NVSwitches", "no switch evidence")
        )
    return findings


def _device_set_findings(
    result: EvidenceSetResult, certified: Mapping[int, DeviceKind | None], gpu: GpuPolicy
) -> list[Finding]:
    """The policy's counts and PPCIe rule, judged on the devices the verifier was given.

    Devices are counted by the kind their leaf certificate names (``certified``; a device whose
    chain, report or architecture fails is contraindicated on its own), never by the lists the
    bundle puts them in: the bundle is the host's, and a GPU listed under ``switches`` is still
    a GPU (and no NVSwitch). With ``ppcie_topology_required`` at least one NVSwitch must be
    attested and the topology check must have run and passed (it requires every GPU in PPCIe
    mode; its failures are findings of their own, from ``result.failures``).
    """
    findings: list[Finding] = []
    kinds = [certified.get(d.index) for d in result.devices]
    gpus = kinds.count(DeviceKind.GPU)
    switches = kinds.count(DeviceKind.SWITCH)
    if gpu.count is not None and gpus != gpu.count:
        findings.append(Finding("enclave", "gpu.count", gpu.count, gpus))
    if gpus == 0:
        findings.append(Finding("enclave", "gpu.count", ">= 1", 0, detail="no GPU attested"))
    if gpu.switch_count is not None and switches != gpu.switch_count:
        findings.append(Finding("enclave", "gpu.switch_count", gpu.switch_count, switches))
    if gpu.ppcie_topology_required:
        if switches == 0:
            findings.append(
                Finding("enclave", "topology", "PPCIe set with NVSwitches", "no switch evidence")
            )
        elif result.topology is None:
            findings.append(
                Finding(
                    "enclave",
                    "topology",
                    "checked",
                    "not checked",
                    detail="no NVSwitch report and no GPU in PPCIe mode parsed",
                )
            )
        # a topology that ran and failed: its failures are in ``result.failures`` already
    return findings


def _nvidia_rp_policies(gpu: GpuPolicy) -> dict[str, NvidiaRpPolicy]:
    """NVIDIA relying-party policies embedded in the lessee policy, by device kind."""
    out: dict[str, NvidiaRpPolicy] = {}
    for doc in gpu.nvidia_relying_party_policies:
        pol = load_nvidia_policy(json.dumps(doc))
        out[pol.kind] = pol
    return out


def appraise_bundle(
    bundle: EvidenceBundle,
    binding: SessionBinding,
    policy: Policy,
    at: datetime,
    *,
    context: AppraisalContext | None = None,
) -> tuple[tuple[DeviceAppraisal, ...], tuple[Finding, ...]]:
    """Verify and appraise everything in ``bundle``; never raises for bad evidence."""
    ctx = context if context is not None else AppraisalContext()
    cpu = _appraise_cpu(bundle, binding, policy, at, ctx)
    devices, findings = _appraise_devices(bundle, binding, policy, at, ctx)
    return (cpu, *devices), tuple(findings)
