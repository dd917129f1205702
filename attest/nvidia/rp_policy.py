"""NVIDIA relying-party policies (v3 and v4 JSON), applied to lessee's NVIDIA claims.

NVIDIA users already write policies as JSON: every claim listed under ``detached-claims`` must
be present in a device's claims and equal; nested objects (certificate-chain claims) list the
sub-claims that must match. Accepting these files lets those users keep their policies while
gaining lessee's stricter verification. v4 policies pair with claims 3.0, which is what
``attest.nvidia.claims`` produces; v3 policies (claims 2.0) use a few older names, translated
here to the 3.0 claims that mean the same (``_CLAIMS_2_TO_3``).

Overall claims: ``x-nvidia-overall-att-result`` and ``x-nvidia-ver`` are evaluated against the
set's overall result. ``iss`` names the verifier that produced the claims: lessee is a local
verifier, so ``LOCAL_GPU_VERIFIER`` is satisfied; a policy that demands NVIDIA's remote service
(NRAS) cannot be satisfied locally and fails with a finding saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from attest.errors import InputError
from attest.findings import Finding
from attest.jsonutil import load_json

#: NVIDIA's policy files are ~1.5 KiB.
MAX_RP_POLICY_BYTES = 64 * 1024
SUPPORTED_VERSIONS = ("3.0", "4.0")
LOCAL_ISSUER = "LOCAL_GPU_VERIFIER"
CLAIMS_VERSION = "3.0"

#: claims 2.0 name -> (claims 3.0 name, sub-claim, required value)
_CLAIMS_2_TO_3: dict[str, tuple[str, str, Any]] = {
    "x-nvidia-gpu-attestation-report-cert-chain-validated": (
        "x-nvidia-gpu-attestation-report-cert-chain",
        "x-nvidia-cert-status",
        "valid",
    ),
    "x-nvidia-gpu-driver-rim-cert-validated": (
        "x-nvidia-gpu-driver-rim-cert-chain",
        "x-nvidia-cert-status",
        "valid",
    ),
    "x-nvidia-gpu-vbios-rim-cert-validated": (
        "x-nvidia-gpu-vbios-rim-cert-chain",
        "x-nvidia-cert-status",
        "valid",
    ),
    "x-nvidia-switch-attestation-report-cert-chain-validated": (
        "x-nvidia-switch-attestation-report-cert-chain",
        "x-nvidia-cert-status",
        "valid",
    ),
    "x-nvidia-switch-bios-rim-cert-validated": (
        "x-nvidia-switch-bios-rim-cert-chain",
        "x-nvidia-cert-status",
        "valid",
    ),
}

_SCALAR = (str, int, bool)


@dataclass(frozen=True)
class NvidiaRpPolicy:
    version: str
    kind: Literal["gpu", "switch"]
    overall_claims: Mapping[str, Any]
    detached_claims: Mapping[str, Any]


def _check_value(path: str, value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, _SCALAR) or v is None:
                raise InputError(f"NVIDIA policy: {path}.{k}: only scalar sub-claims are supported")
    elif not isinstance(value, _SCALAR):
        raise InputError(f"NVIDIA policy: {path}: unsupported value type {type(value).__name__}")


def load_nvidia_policy(data: bytes | str) -> NvidiaRpPolicy:
    """Parse an NVIDIA relying-party policy (version 3.0 or 4.0), strictly."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_RP_POLICY_BYTES:
        raise InputError(f"NVIDIA policy is larger than {MAX_RP_POLICY_BYTES} bytes")
    doc = load_json(raw, what="NVIDIA policy")
    if not isinstance(doc, dict) or set(doc) != {"version", "authorization-rules"}:
        raise InputError("NVIDIA policy must have exactly 'version' and 'authorization-rules'")
    version = doc["version"]
    if version not in SUPPORTED_VERSIONS:
        raise InputError(
            f"NVIDIA policy version {version!r} not supported ({', '.join(SUPPORTED_VERSIONS)})"
        )
    rules = doc["authorization-rules"]
    if not isinstance(rules, dict) or rules.get("type") != "JWT":
        raise InputError("NVIDIA policy: authorization-rules.type must be 'JWT'")
    unknown = set(rules) - {"type", "overall-claims", "detached-claims"}
    if unknown:
        raise InputError(f"NVIDIA policy: unknown authorization-rules fields {sorted(unknown)}")
    overall = rules.get("overall-claims", {})
    detached = rules.get("detached-claims", {})
    if not isinstance(overall, dict) or not isinstance(detached, dict) or not detached:
        raise InputError(
            "NVIDIA policy: overall-claims/detached-claims must be objects (detached non-empty)"
        )
    for k, v in (*overall.items(), *detached.items()):
        _check_value(k, v)
    kinds = {
        "switch" if "x-nvidia-switch-" in k else "gpu"
        for k in detached
        if k.startswith("x-nvidia-")
    }
    if len(kinds) != 1:
        raise InputError("NVIDIA policy mixes GPU and switch claims")
    kind: Literal["gpu", "switch"] = "switch" if kinds.pop() == "switch" else "gpu"
    return NvidiaRpPolicy(
        version=version, kind=kind, overall_claims=overall, detached_claims=detached
    )


def evaluate_device(
    policy: NvidiaRpPolicy, device: str, claims: Mapping[str, Any]
) -> list[Finding]:
    """Every listed detached claim must be present in ``claims`` and equal. Returns findings."""
    findings: list[Finding] = []
    for name, expected in policy.detached_claims.items():
        if name in _CLAIMS_2_TO_3 and name not in claims:
            new, sub, want = _CLAIMS_2_TO_3[name]
            got = claims.get(new, {}).get(sub) if isinstance(claims.get(new), dict) else None
            if (got == want) != expected:
                findings.append(
                    Finding(device, name, expected, got == want, detail=f"via {new}.{sub}")
                )
            continue
        if name not in claims:
            findings.append(Finding(device, name, expected, None, detail="claim missing"))
            continue
        actual = claims[name]
        if isinstance(expected, dict):
            if not isinstance(actual, dict):
                findings.append(Finding(device, name, expected, actual))
                continue
            for sub, want in expected.items():
                if actual.get(sub) != want:
                    findings.append(Finding(device, f"{name}.{sub}", want, actual.get(sub)))
        elif actual != expected or type(actual) is not type(expected):
            findings.append(Finding(device, name, expected, actual))
    return findings


def evaluate_overall(policy: NvidiaRpPolicy, *, all_devices_passed: bool) -> list[Finding]:
    """Check the policy's overall claims against the result of the whole set."""
    findings: list[Finding] = []
    for name, expected in policy.overall_claims.items():
        if name == "x-nvidia-overall-att-result":
            actual: Any = all_devices_passed
        elif name == "x-nvidia-ver":
            # Claims 3.0 are a superset of 2.0 under the translation above.
            actual = expected if expected in ("2.0", CLAIMS_VERSION) else CLAIMS_VERSION
        elif name == "iss":
            actual = LOCAL_ISSUER
        else:
            actual = None
        if actual != expected:
            findings.append(Finding("overall", name, expected, actual))
    return findings
