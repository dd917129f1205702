"""NVIDIA claims 3.0, per GPU and per NVSwitch, with the same names and meanings as NVIDIA's.

Relying parties already hold policies written against NVIDIA's claims (``x-nvidia-gpu-*`` for
GPUs, ``x-nvidia-switch-*`` for NVSwitches, version 3.0 with a ``...-cert-chain`` object per
chain; examples in tests/assets/nvidia/sdk_claims_examples/). Emitting the same names lets those
policies keep working. Where our verifier knows more than NVIDIA's, it adds ``x-lessee-*`` claims
instead of changing the meaning of an NVIDIA one:

* ``x-lessee-fwid-binding``: ``match`` | ``absent-in-report`` | ``mismatch`` | ``not-checked``.
  NVIDIA's ``...-cert-chain-fwid-match`` is true when the report carries no FWID (their check is
  skipped); ours says which case it was.
* ``x-lessee-revocation-mode``: ``online`` | ``stapled`` | ``skip``.

This module only renders facts the verifier established (``DeviceChecks``); it decides nothing.
Failures (field, expected, actual) are built by the verifier with ``Failure``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from attest.nvidia.opaque import DeviceKind

CLAIMS_VERSION = "3.0"
#: NVIDIA's format for x-nvidia-cert-expiration-date (UTC, no zone designator).
_EXPIRY_FORMAT = "%Y-%m-%dT%H:%M:%S"


@dataclass(frozen=True)
class Failure:
    """One failed check: the claim or field, what was expected, what was found, and why."""

    field: str
    expected: object
    actual: object
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "field": self.field,
            "expected": _jsonable(self.expected),
            "actual": _jsonable(self.actual),
            "detail": self.detail,
        }

    def __str__(self) -> str:
        text = (
            f"{self.field}: expected {_jsonable(self.expected)!r}, got {_jsonable(self.actual)!r}"
        )
        return f"{text} ({self.detail})" if self.detail else text


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list | set | frozenset):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    return value


@dataclass(frozen=True)
class ChainClaim:
    """What the verifier found about one certificate chain, in NVIDIA's vocabulary.

    ``status``: ``valid``, ``expired``, ``not_yet_valid``, ``invalid`` or ``not-checked``.
    ``ocsp_status``: ``good``, ``revoked``, ``certificate_hold``, ``unknown``, ``missing``,
    ``invalid``, ``skipped`` or ``not-checked``: the worst over the checked certificates.
    """

    status: str
    ocsp_status: str
    expiration: datetime | None = None
    revocation_reason: str | None = None

    def to_claim(self) -> dict[str, object]:
        return {
            "x-nvidia-cert-expiration-date": (
                self.expiration.strftime(_EXPIRY_FORMAT) if self.expiration else None
            ),
            "x-nvidia-cert-status": self.status,
            "x-nvidia-cert-ocsp-status": self.ocsp_status,
            "x-nvidia-cert-revocation-reason": self.revocation_reason,
        }


NOT_CHECKED_CHAIN = ChainClaim(status="not-checked", ocsp_status="not-checked")


@dataclass(frozen=True)
class RimChecks:
    """The RIM stages, as NVIDIA names them, for one RIM (driver, VBIOS or switch BIOS)."""

    rim_id: str | None = None
    fetched: bool = False
    schema_validated: bool = False
    signature_verified: bool = False
    cert_chain: ChainClaim = NOT_CHECKED_CHAIN
    version_match: bool = False
    measurements_available: bool = False


@dataclass(frozen=True)
class DeviceChecks:
    """Everything the verifier established about one device (GPU or NVSwitch)."""

    kind: DeviceKind
    arch_check: bool = False
    parsed: bool = False
    nonce_match: bool = False
    signature_verified: bool = False
    cert_chain: ChainClaim = NOT_CHECKED_CHAIN
    fwid: str = "not-checked"
    driver_version: str | None = None
    vbios_version: str | None = None
    driver_rim: RimChecks = RimChecks()
    vbios_rim: RimChecks = RimChecks()
    index_no_conflict: bool = False
    measurements_match: bool = False
    nonce: str | None = None
    hwmodel: str | None = None
    ueid: str | None = None
    oemid: str | None = None
    revocation_mode: str | None = None


def _chain_claims(prefix: str, rim: RimChecks) -> dict[str, object]:
    return {
        f"{prefix}-rim-fetched": rim.fetched,
        f"{prefix}-rim-schema-validated": rim.schema_validated,
        f"{prefix}-rim-cert-chain": rim.cert_chain.to_claim(),
        f"{prefix}-rim-signature-verified": rim.signature_verified,
        f"{prefix}-rim-version-match": rim.version_match,
        f"{prefix}-rim-measurements-available": rim.measurements_available,
    }


def _vbios_upper(version: str | None) -> str | None:
    return version.upper() if version is not None else None


def gpu_claims(c: DeviceChecks) -> dict[str, object]:
    """NVIDIA claims 3.0 for one GPU (``x-nvidia-gpu-*``, ``measres``, EAT identity claims)."""
    claims: dict[str, object] = {
        "x-nvidia-ver": CLAIMS_VERSION,
        "measres": "success" if c.measurements_match else "fail",
        "x-nvidia-gpu-arch-check": c.arch_check,
        "x-nvidia-gpu-driver-version": c.driver_version,
        "x-nvidia-gpu-vbios-version": _vbios_upper(c.vbios_version),
        "x-nvidia-gpu-attestation-report-cert-chain": c.cert_chain.to_claim(),
        "x-nvidia-gpu-attestation-report-cert-chain-fwid-match": c.fwid
        in ("match", "absent-in-report"),
        "x-nvidia-gpu-attestation-report-parsed": c.parsed,
        "x-nvidia-gpu-attestation-report-nonce-match": c.nonce_match,
        "x-nvidia-gpu-attestation-report-signature-verified": c.signature_verified,
        **_chain_claims("x-nvidia-gpu-driver", c.driver_rim),
        **_chain_claims("x-nvidia-gpu-vbios", c.vbios_rim),
        "x-nvidia-gpu-vbios-index-no-conflict": c.index_no_conflict,
        "eat_nonce": c.nonce,
        "hwmodel": c.hwmodel,
        "ueid": c.ueid,
        "oemid": c.oemid,
        "x-lessee-fwid-binding": c.fwid,
        "x-lessee-revocation-mode": c.revocation_mode,
    }
    if c.measurements_match:  # NVIDIA adds these only when the measurements matched
        claims["secboot"] = True
        claims["dbgstat"] = "disabled"
    return claims


def switch_claims(c: DeviceChecks) -> dict[str, object]:
    """NVIDIA claims 3.0 for one NVSwitch (``x-nvidia-switch-*``)."""
    bios = c.vbios_rim
    claims: dict[str, object] = {
        "x-nvidia-ver": CLAIMS_VERSION,
        "measres": "success" if c.measurements_match else "fail",
        "x-nvidia-switch-arch-check": c.arch_check,
        "x-nvidia-switch-bios-version": _vbios_upper(c.vbios_version),
        "x-nvidia-switch-attestation-report-cert-chain": c.cert_chain.to_claim(),
        "x-nvidia-switch-attestation-report-cert-chain-fwid-match": c.fwid
        in ("match", "absent-in-report"),
        "x-nvidia-switch-attestation-report-parsed": c.parsed,
        "x-nvidia-switch-attestation-report-nonce-match": c.nonce_match,
        "x-nvidia-switch-attestation-report-signature-verified": c.signature_verified,
        "x-nvidia-switch-bios-rim-fetched": bios.fetched,
        "x-nvidia-switch-bios-rim-schema-validated": bios.schema_validated,
        "x-nvidia-switch-bios-rim-cert-chain": bios.cert_chain.to_claim(),
        "x-nvidia-switch-bios-rim-version-match": bios.version_match,
        "x-nvidia-switch-bios-rim-signature-verified": bios.signature_verified,
        "x-nvidia-switch-bios-rim-measurements-available": bios.measurements_available,
        "eat_nonce": c.nonce,
        "hwmodel": c.hwmodel,
        "ueid": c.ueid,
        "x-lessee-fwid-binding": c.fwid,
        "x-lessee-revocation-mode": c.revocation_mode,
    }
    if c.measurements_match:
        claims["secboot"] = True
        claims["dbgstat"] = "disabled"
    return claims


def device_claims(c: DeviceChecks) -> dict[str, object]:
    return gpu_claims(c) if c.kind is DeviceKind.GPU else switch_claims(c)
