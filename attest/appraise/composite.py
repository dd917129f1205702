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

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from attest import roots
from attest.appraise.common import DeviceAppraisal, FindingCollector
from attest.appraise.snp import appraise_snp
from attest.appraise.tdx import appraise_tdx
from attest.binding import SessionBinding
from attest.bundle import DeviceEvidenceIn, EvidenceBundle, SnpEvidenceIn, TdxEvidenceIn
from attest.errors import InputError, LesseeError
from attest.findings import Finding, Severity
from attest.nvidia.evidence import DeviceEvidence, chain_arch
from attest.nvidia.rim import RimCollection
from attest.nvidia.verifier import DeviceResult, VerifierCaches, verify_gpu_evidence
from attest.policy import CpuTee, GpuPolicy, MissingRevocation, Policy
from attest.revocation.ocsp import RevocationMode, StapledOcsp
from attest.snp.verify import load_amd_certificates, verify_snp_report
from attest.tdx.collateral import parse_collateral_json
from attest.tdx.quote import parse_quote
from attest.tdx.verify import verify_quote
from attest.x509chain import load_pem_chain

GPU_CATEGORIES = {
    "instance-identity": (
        "x-nvidia-gpu-attestation-report-nonce-match",
        "gpu.nonce",
        "x-nvidia-switch-attestation-report-nonce-match",
    ),
    "hardware": (
        "x-nvidia-gpu-attestation-report",
        "x-nvidia-switch-attestation-report",
        "x-nvidia-gpu-arch",
        "x-nvidia-switch-arch",
        "gpu.arch",
        "gpu.cc_mode",
        "gpu.count",
    ),
    "executables": (
        "measres",
        "x-nvidia-gpu-driver",
        "x-nvidia-gpu-vbios",
        "x-nvidia-switch-bios",
        "gpu.minimum",
    ),
    "configuration": ("gpu.devtools", "topology", "device"),
}


def _sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


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
    """Long-lived state for a broker: caches per trust-anchor set and broker-side RIMs."""

    rims: Sequence[bytes] = ()
    candidates: Mapping[str, x509.Certificate] = field(default_factory=dict)
    amd_extra_arks: Sequence[x509.Certificate] = ()
    _caches: dict[tuple[str, str], VerifierCaches] = field(default_factory=dict)

    def caches_for(self, anchors: TrustAnchors) -> VerifierCaches:
        key = (_sha256(anchors.nvidia_device_root), _sha256(anchors.nvidia_rim_root))
        caches = self._caches.get(key)
        if caches is None:
            caches = VerifierCaches(
                device_root=anchors.nvidia_device_root, rim_root=anchors.nvidia_rim_root
            )
            self._caches[key] = caches
        return caches


def _verification_failed(name: str, field_name: str, exc: LesseeError) -> DeviceAppraisal:
    reason = getattr(exc, "reason", type(exc).__name__)
    return DeviceAppraisal(
        name,
        (Finding(name, field_name, "verified", reason, Severity.REJECT, str(exc)),),
        {"hardware": (field_name,)},
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
            certs = tuple(c for blob in cpu.certificates for c in load_amd_certificates(blob))
            extra = [
                a for a in ctx.amd_extra_arks if _sha256(a) in policy.roots.extra_trusted_sha256
            ]
            verified = verify_snp_report(cpu.report, certs, at=at, extra_arks=extra)
        except LesseeError as exc:
            return _verification_failed("cpu0", "snp.verification", exc)
        return appraise_snp(verified, policy.snp, binding)
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
    return appraise_tdx(tdx, policy.tdx, binding)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part, 16) if not part.isdigit() else int(part) for part in text.split("."))


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
        if gpu.unsafe_skip_rim_match and (f.field == "measres" or "rim" in f.field):
            severity = Severity.WARN
        c.findings.append(Finding(result.name, f.field, f.expected, f.actual, severity, f.detail))
    for w in result.warnings:
        c.findings.append(Finding(result.name, "warning", None, None, Severity.WARN, w))
    if result.name.startswith("gpu"):
        c.expect(result.arch in gpu.architectures, "gpu.arch", list(gpu.architectures), result.arch)
        driver = result.claims.get("x-nvidia-gpu-driver-version")
        vbios = result.claims.get("x-nvidia-gpu-vbios-version")
        if gpu.minimum_driver_version is not None:
            ok = isinstance(driver, str) and _version_tuple(driver) >= _version_tuple(
                gpu.minimum_driver_version
            )
            c.expect(ok, "gpu.minimum_driver_version", f">= {gpu.minimum_driver_version}", driver)
        if gpu.minimum_vbios_version is not None:
            ok = isinstance(vbios, str) and _version_tuple(vbios) >= _version_tuple(
                gpu.minimum_vbios_version
            )
            c.expect(ok, "gpu.minimum_vbios_version", f">= {gpu.minimum_vbios_version}", vbios)
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


def _to_device_evidence(items: Sequence[DeviceEvidenceIn], start: int) -> list[DeviceEvidence]:
    out = []
    for i, d in enumerate(items, start):
        chain = load_pem_chain(d.certificate_chain_pem)
        arch = chain_arch(chain)
        out.append(DeviceEvidence(index=i, arch=arch, report_bytes=d.report, chain=chain))
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
    count = len(bundle.gpus)
    if gpu.count is not None and count != gpu.count:
        findings.append(Finding("enclave", "gpu.count", gpu.count, count))
    if count == 0:
        findings.append(Finding("enclave", "gpu.count", ">= 1", 0, detail="no GPU evidence"))
        return [], findings
    if gpu.switch_count is not None and len(bundle.switches) != gpu.switch_count:
        findings.append(
            Finding("enclave", "gpu.switch_count", gpu.switch_count, len(bundle.switches))
        )
    if gpu.ppcie_topology_required and not bundle.switches:
        findings.append(
            Finding("enclave", "topology", "PPCIe set with NVSwitches", "no switch evidence")
        )
    try:
        evidence = _to_device_evidence(bundle.gpus, 0) + _to_device_evidence(
            bundle.switches, len(bundle.gpus)
        )
    except InputError as exc:
        findings.append(Finding("enclave", "gpu.evidence", "readable certificate chains", str(exc)))
        return [], findings
    rims = [r for d in (*bundle.gpus, *bundle.switches) for r in d.rims] + list(ctx.rims)
    ocsp = [o for d in (*bundle.gpus, *bundle.switches) for o in d.ocsp_responses]
    anchors = TrustAnchors.for_policy(policy, candidates=ctx.candidates)
    result = verify_gpu_evidence(
        evidence,
        at=at,
        expected_nonce=binding.gpu_nonce,
        rim_source=RimCollection(rims),
        revocation_mode=RevocationMode.STAPLED,
        ocsp_source=StapledOcsp(ocsp),
        allow_hold="certificate_hold" in gpu.allowed_ocsp_statuses,
        caches=ctx.caches_for(anchors),
    )
    for f in result.failures:
        findings.append(
            Finding("enclave", f.field, f.expected, f.actual, Severity.REJECT, f.detail)
        )
    devices = []
    for d in result.devices:
        devices.append(
            DeviceAppraisal(
                d.name,
                tuple(_gpu_policy_findings(d, gpu, bundle, policy)),
                GPU_CATEGORIES,
                dict(d.claims),
            )
        )
    return devices, findings


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


Appraise = Callable[
    [EvidenceBundle, SessionBinding, Policy, datetime],
    tuple[tuple[DeviceAppraisal, ...], tuple[Finding, ...]],
]
