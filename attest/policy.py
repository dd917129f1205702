"""The appraisal policy: one strict document per deployment or model.

Design rules (docs/policy.md):

* Strict pydantic models, unknown fields forbidden, frozen: a typo in a policy is an error, not a
  silently ignored check.
* A field left out takes the *safe* default. Where no safe default exists (which measurements
  are yours), the field is required: a policy that does not say which VM images it accepts does
  not load. Turning a check off is an explicit field whose name starts with ``unsafe_``, and
  ``Policy.unsafe_settings()`` lists every one that is on, so tools can print them loudly.
* The policy is identified by the SHA-256 of its canonical JSON (``Policy.digest``); results
  and log entries carry that digest, and the document itself is kept for replay.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from attest.errors import InputError
from attest.jsonutil import load_json

#: A policy document is small; refuse anything that cannot be one before parsing it.
MAX_POLICY_BYTES = 256 * 1024

Hex48 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{96}$")]
Hex32 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Sha256Fingerprint = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
#: An SEV-SNP VM privilege level: 0 (most privileged) to 3, as the report's VMPL field holds.
Vmpl = Annotated[int, Field(ge=0, le=3)]
#: NVIDIA driver versions are dotted decimal ("535.104.05"), VBIOS versions dotted hex
#: ("96.00.88.00.11"); the same shapes the appraisal parses (``attest.appraise.composite``),
#: so a minimum that could never compare is refused when the policy loads, not at every GPU.
DriverVersion = Annotated[
    str, StringConstraints(pattern=r"^[0-9]{1,9}(\.[0-9]{1,9}){0,7}$", max_length=32)
]
VbiosVersion = Annotated[
    str, StringConstraints(pattern=r"^[0-9A-Fa-f]{1,8}(\.[0-9A-Fa-f]{1,8}){0,7}$", max_length=32)
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    #: Fields added after their section first shipped, left out of ``Policy.digest`` while
    #: they hold their default: a policy written before a field existed keeps its digest, so
    #: results and logged decisions made under it still name the same policy after an upgrade
    #: (the audit replay compares the digest a result names with the logged policy's).
    DIGEST_OMITTED_AT_DEFAULT: ClassVar[frozenset[str]] = frozenset()


class CpuTee(StrEnum):
    SNP = "snp"
    TDX = "tdx"


class MissingRevocation(StrEnum):
    """What absent revocation data means: rejection (default) or a warning."""

    REJECT = "reject"
    WARN = "warn"


class TdxTcbStatus(StrEnum):
    """The TCB statuses a policy may accept. ``Revoked`` is not one of them: Intel revoked that
    TCB, and a revoked platform is refused whatever the policy says (as a revoked certificate
    is). The ``OutOfDate*`` statuses weaken the check and are listed by ``unsafe_settings``."""

    UP_TO_DATE = "UpToDate"
    SW_HARDENING_NEEDED = "SWHardeningNeeded"
    CONFIGURATION_NEEDED = "ConfigurationNeeded"
    CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
    OUT_OF_DATE = "OutOfDate"
    OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"


class SnpMinimumTcb(_Strict):
    """Minimum SVNs of the reported TCB. Zero means 'any'; set them from AMD's bulletins."""

    bootloader: int = Field(default=0, ge=0, le=255)
    tee: int = Field(default=0, ge=0, le=255)
    snp: int = Field(default=0, ge=0, le=255)
    microcode: int = Field(default=0, ge=0, le=255)
    fmc: int = Field(default=0, ge=0, le=255)


class SnpPolicy(_Strict):
    #: Fields added after policies were in use: left out of ``Policy.digest`` at their default,
    #: so an existing policy keeps its digest (``_Strict.DIGEST_OMITTED_AT_DEFAULT``).
    DIGEST_OMITTED_AT_DEFAULT: ClassVar[frozenset[str]] = frozenset(
        {
            "minimum_tcb_by_product",
            "unsafe_ignore_launch_tcb",
            "unsafe_allow_cxl",
            "require_single_socket",
            "require_alias_check_complete",
            "allowed_platform_info_unknown_bits",
        }
    )
    #: Launch measurements (SHA-384, hex) of the VM images you accept. Required: only you know.
    allowed_measurements: tuple[Hex48, ...] | None = None
    unsafe_any_measurement: bool = False
    allowed_vmpls: tuple[Vmpl, ...] = (0,)
    allowed_signing_keys: tuple[Literal["vcek", "vlek"], ...] = (
        "vcek",
        "vlek",
    )
    minimum_tcb: SnpMinimumTcb = Field(default_factory=SnpMinimumTcb)
    #: Per product line, replacing ``minimum_tcb`` for that line: SVN numbering differs between
    #: Milan, Genoa and Turin (the same microcode number is old on one and new on another), and
    #: AMD publishes its minimums per product, so one set of numbers cannot serve a fleet that
    #: mixes lines. A line without an entry is held to ``minimum_tcb``.
    minimum_tcb_by_product: dict[Literal["Milan", "Genoa", "Turin"], SnpMinimumTcb] = Field(
        default_factory=dict
    )
    #: The minimum applies to LAUNCH_TCB too (findings ``snp.launch_tcb.<part>``): a guest
    #: launched under vulnerable firmware and carried through a live update still reports the
    #: new REPORTED_TCB. ``true`` judges REPORTED_TCB alone.
    unsafe_ignore_launch_tcb: bool = False
    allow_smt: bool = True
    unsafe_allow_debug: bool = False
    unsafe_allow_migration_agent: bool = False
    #: Guest POLICY.CXL_ALLOW (bit 21): the guest's memory may be placed in CXL-attached memory,
    #: outside the CPU package on a device and link the host provides (finding
    #: ``snp.policy.cxl_allow``). No real report sets it.
    unsafe_allow_cxl: bool = False
    #: Require guest POLICY.SINGLE_SOCKET (bit 20): the guest may run on one socket only
    #: (finding ``snp.policy.single_socket``). Opt-in: no real report sets it.
    require_single_socket: bool = False
    #: Require PLATFORM_INFO.ALIAS_CHECK_COMPLETE (bit 5): the firmware checked the DRAM for
    #: aliased addresses at boot, AMD's BadRAM (CVE-2024-21944) mitigation (finding
    #: ``snp.platform.alias_check_complete``). Opt-in: firmware before the mitigation, the real
    #: reports' included, never sets it.
    require_alias_check_complete: bool = False
    #: PLATFORM_INFO bits the ABI does not define (today: 6 and 8-63) accepted when set, as a
    #: 64-bit mask; any other undefined bit that is set is a reject finding
    #: (``snp.platform.unknown_bits``): it is a fact about the host that lessee cannot judge.
    allowed_platform_info_unknown_bits: int = Field(default=0, ge=0, le=(1 << 64) - 1)
    #: Accepted AMD product lines; the ARK of each is pinned by hash in attest/roots.
    products: tuple[Literal["Milan", "Genoa", "Turin"], ...] = (
        "Milan",
        "Genoa",
        "Turin",
    )

    @model_validator(mode="after")
    def _measurements_named(self) -> SnpPolicy:
        if self.allowed_measurements is None and not self.unsafe_any_measurement:
            raise ValueError(
                "snp.allowed_measurements is required (or set snp.unsafe_any_measurement: true)"
            )
        return self

    @field_validator("allowed_platform_info_unknown_bits")
    @classmethod
    def _undefined_platform_bits_only(cls, mask: int) -> int:
        """Only undefined bits: a defined bit (SMT_EN, ALIAS_CHECK_COMPLETE, ...) is never
        "unknown", so listing one would be a mistake that silently does nothing."""
        from attest.snp.report import PLAT_KNOWN_MASK

        defined = sorted(b for b in range(64) if (mask & PLAT_KNOWN_MASK) >> b & 1)
        if defined:
            raise ValueError(
                f"bits {defined} are defined PLATFORM_INFO bits (0-5, 7), not unknown ones"
            )
        return mask


class RtmrRule(_Strict):
    index: int = Field(ge=0, le=3)
    allowed: tuple[Hex48, ...]


#: A TD_ATTRIBUTES bit number that the TDX 1.0 ABI reserves (TUD 7:1, SEC 27:8, 62:32); the
#: named bits (0, 28-31, 63) have their own fields. Checked against the parser's mask below.
ReservedTdAttributeBit = Annotated[int, Field(ge=1, le=62)]
#: XFAM as the quote holds it: 8 bytes, hex, in the quote's (little-endian) byte order, exactly
#: as ``lessee cpu inspect`` prints it (e.g. ``e702060000000000``).
XfamHex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
#: More allowed XFAM values than any deployment runs CPU models.
MAX_ALLOWED_XFAM = 64


class TdxPolicy(_Strict):
    """The ``tdx`` section. TD_ATTRIBUTES defaults (docs/tdx.md, "TD attributes"): DEBUG,
    MIGRATABLE, KL and every reserved bit refused; PKS and PERFMON accepted; SEPT_VE_DISABLE
    reported but required only on request, since real production TDs run without it."""

    DIGEST_OMITTED_AT_DEFAULT: ClassVar[frozenset[str]] = frozenset(
        {
            "require_sept_ve_disable",
            "unsafe_allow_migratable",
            "allow_pks",
            "allow_kl",
            "allow_perfmon",
            "unsafe_allow_td_attribute_bits",
            "allowed_xfam",
            "allowed_mr_config_id",
            "allowed_mr_owner",
            "allowed_mr_owner_config",
            "allowed_mr_servicetd",
        }
    )

    allowed_mrtd: tuple[Hex48, ...] | None = None
    unsafe_any_mrtd: bool = False
    rtmrs: tuple[RtmrRule, ...] = ()
    accepted_tcb_statuses: tuple[TdxTcbStatus, ...] = (TdxTcbStatus.UP_TO_DATE,)
    #: TD_ATTRIBUTES.DEBUG (bit 0): the host can read and write the TD.
    unsafe_allow_debug: bool = False
    #: TD_ATTRIBUTES.SEPT_VE_DISABLE (bit 28) must be set. Opt-in: go-tdx-guest's SPR_E4
    #: production quote and Azure's TDs run without it, and on TDX modules with flexible
    #: pending-#VE control the guest turns those #VEs off itself after the quote's launch value.
    require_sept_ve_disable: bool = False
    #: TD_ATTRIBUTES.MIGRATABLE (bit 29): the TD's state may leave for an unattested platform.
    unsafe_allow_migratable: bool = False
    #: TD_ATTRIBUTES.PKS (bit 30): supervisor protection keys, a guest hardening feature.
    allow_pks: bool = True
    #: TD_ATTRIBUTES.KL (bit 31): Key Locker; go-tdx-guest treats it as must-be-zero.
    allow_kl: bool = False
    #: TD_ATTRIBUTES.PERFMON (bit 63): the TD may use the PMU; go-tdx-guest accepts it too.
    allow_perfmon: bool = True
    #: Reserved TD_ATTRIBUTES bits (TDX 1.0) accepted when set, e.g. 27 (LASS) once a newer
    #: module sets it; every other reserved bit that is set is a reject finding.
    unsafe_allow_td_attribute_bits: tuple[ReservedTdAttributeBit, ...] = Field(
        default=(), max_length=64
    )
    #: XFAM values (the TD's enabled extended CPU state) accepted; ``None``: any, but reported.
    allowed_xfam: tuple[XfamHex, ...] | None = Field(default=None, max_length=MAX_ALLOWED_XFAM)
    #: MRCONFIGID, MROWNER, MROWNERCONFIG values accepted (hex, 48 bytes each; ``None``: any).
    #: The host passes them in TD_PARAMS when it creates the TD and MRTD does not measure them:
    #: software identifiers of the TD's configuration and owner, given meaning by whoever sets
    #: them (findings ``tdx.mr_config_id``, ``tdx.mr_owner``, ``tdx.mr_owner_config``).
    allowed_mr_config_id: tuple[Hex48, ...] | None = None
    allowed_mr_owner: tuple[Hex48, ...] | None = None
    allowed_mr_owner_config: tuple[Hex48, ...] | None = None
    #: MRSERVICETD values accepted (``None``: any): the measurement of the service TDs (e.g. a
    #: Migration TD) bound to this TD, in TDX 1.5 TD reports only (quote v5, body type 3). A
    #: quote without the field cannot show it, so a list here refuses a TDX 1.0 body (finding
    #: ``tdx.mr_servicetd``). All zeros: no service TD bound.
    allowed_mr_servicetd: tuple[Hex48, ...] | None = None

    @model_validator(mode="after")
    def _mrtd_named(self) -> TdxPolicy:
        if self.allowed_mrtd is None and not self.unsafe_any_mrtd:
            raise ValueError("tdx.allowed_mrtd is required (or set tdx.unsafe_any_mrtd: true)")
        return self

    @field_validator("unsafe_allow_td_attribute_bits")
    @classmethod
    def _reserved_bits_only(cls, bits: tuple[int, ...]) -> tuple[int, ...]:
        """Only reserved bits, each once: a named bit listed here would silently bypass its
        own field (``allow_kl``, ``unsafe_allow_migratable``, ...)."""
        from attest.tdx.quote import TD_ATTR_RESERVED_MASK

        named = sorted(b for b in bits if not TD_ATTR_RESERVED_MASK >> b & 1)
        if named:
            raise ValueError(
                f"bits {named} are named TD attributes with their own policy fields"
                " (28 sept_ve_disable, 29 migratable, 30 pks, 31 kl)"
            )
        if len(set(bits)) != len(bits):
            raise ValueError("each bit may be listed once")
        return bits


class GpuPolicy(_Strict):
    DIGEST_OMITTED_AT_DEFAULT: ClassVar[frozenset[str]] = frozenset({"stapled_rims"})
    architectures: tuple[Literal["HOPPER", "BLACKWELL"], ...] = (
        "HOPPER",
        "BLACKWELL",
    )
    #: Minimum versions; None means "any version whose signed RIMs match" (RIM match is on).
    minimum_driver_version: DriverVersion | None = None
    minimum_vbios_version: VbiosVersion | None = None
    #: Exact number of GPUs expected (None: at least one).
    count: int | None = Field(default=None, ge=1, le=64)
    unsafe_skip_rim_match: bool = False
    unsafe_allow_cc_off: bool = False
    unsafe_allow_devtools: bool = False
    allowed_ocsp_statuses: tuple[Literal["good", "certificate_hold"], ...] = ("good",)
    ppcie_topology_required: bool = False
    #: Use RIMs the host staples to the evidence (true), or only those the broker holds (its
    #: --rims directory, NVIDIA's RIM service): NVIDIA has signed more than one RIM for some
    #: VBIOS ids (a test build's and the production one), and a host that staples one when the
    #: broker holds none picks which golden values apply.
    stapled_rims: bool = True
    #: NVIDIA relying-party policies (JSON objects, versions 3.0/4.0, at most one for GPUs and
    #: one for NVSwitches) applied to each device's NVIDIA claims on top of lessee's checks.
    nvidia_relying_party_policies: tuple[dict[str, Any], ...] = Field(default=(), max_length=2)
    switch_count: int | None = Field(default=None, ge=0, le=64)

    @model_validator(mode="after")
    def _nvidia_policies_valid(self) -> GpuPolicy:
        # Imported here: attest.nvidia is heavy and most policies embed no NVIDIA policy.
        from attest.nvidia.rp_policy import load_nvidia_policy

        kinds = []
        for doc in self.nvidia_relying_party_policies:
            try:
                kinds.append(load_nvidia_policy(json.dumps(doc)).kind)
            except InputError as exc:
                raise ValueError(f"gpu.nvidia_relying_party_policies: {exc}") from None
        if len(set(kinds)) != len(kinds):
            raise ValueError("gpu.nvidia_relying_party_policies: at most one per device kind")
        return self


#: Upper bound of ``freshness.max_collateral_age_seconds``: ten years, far past any collateral
#: worth accepting, and far below ``timedelta``'s limit (999 999 999 days), which an unbounded
#: value overflowed inside the appraisal (OverflowError) after the policy had loaded.
MAX_COLLATERAL_AGE_SECONDS = 10 * 365 * 86400


class Freshness(_Strict):
    """Every field becomes a ``timedelta`` (broker, appraisal), so every one is bounded both
    ways: a policy that loads must not fail later inside the appraisal."""

    #: How long a broker nonce stays usable.
    nonce_ttl_seconds: int = Field(default=120, ge=1, le=3600)
    #: How long an issued attestation result authorises key release.
    result_ttl_seconds: int = Field(default=300, ge=1, le=86400)
    #: Oldest TDX/SNP collateral accepted (seconds since its issue date).
    max_collateral_age_seconds: int = Field(
        default=30 * 86400, ge=60, le=MAX_COLLATERAL_AGE_SECONDS
    )


class Roots(_Strict):
    """Extra roots to trust, by SHA-256 of the DER certificate. Vendor roots are always pinned.

    Emulation roots (see ``lessee demo``) are only trusted when listed here; no default policy
    lists them.
    """

    extra_trusted_sha256: tuple[Sha256Fingerprint, ...] = ()


class Policy(_Strict):
    """One deployment's appraisal policy."""

    version: Literal[1] = 1
    name: str = Field(min_length=1, max_length=128)
    cpu_tees: tuple[CpuTee, ...] = Field(min_length=1)
    snp: SnpPolicy | None = None
    tdx: TdxPolicy | None = None
    gpu: GpuPolicy = Field(default_factory=GpuPolicy)
    freshness: Freshness = Field(default_factory=Freshness)
    roots: Roots = Field(default_factory=Roots)
    missing_revocation: MissingRevocation = MissingRevocation.REJECT
    #: Sealed-model manifests this policy releases keys for (SHA-256 hex), if pinned.
    model_manifest_digests: tuple[Hex32, ...] = ()

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_the_integer_one(cls, value: Any) -> Any:
        """Exactly the JSON integer 1. ``Literal[1]`` alone matches by equality, and
        ``True == 1.0 == 1`` in Python, so ``true`` and ``1.0`` loaded as version 1 and got the
        digest of ``1``: documents that differ (and that a stricter reader refuses) under one
        digest. Runs only on a version given; the default is the integer 1 already."""
        if type(value) is not int or value != 1:
            shown = json.dumps(value, default=repr)[:32]
            raise ValueError(f"version must be the integer 1, not {shown}")
        return value

    @model_validator(mode="after")
    def _tee_sections_present(self) -> Policy:
        if CpuTee.SNP in self.cpu_tees and self.snp is None:
            raise ValueError("cpu_tees lists 'snp' but the 'snp' section is missing")
        if CpuTee.TDX in self.cpu_tees and self.tdx is None:
            raise ValueError("cpu_tees lists 'tdx' but the 'tdx' section is missing")
        return self

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of the canonical JSON of the whole policy: defaults included, except
        those of fields added later (``DIGEST_OMITTED_AT_DEFAULT``), so that an upgrade does not
        change the digest of a policy that does not use them."""
        data = self.model_dump(mode="json")
        _omit_later_defaults(self, data)
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()

    def unsafe_settings(self) -> list[str]:
        """Every ``unsafe_*`` switch that is on (a true flag, a non-empty list), as dotted paths
        (printed loudly by tools)."""
        out: list[str] = []

        def walk(prefix: str, model: BaseModel) -> None:
            for name in type(model).model_fields:
                value = getattr(model, name)
                if name.startswith("unsafe_") and (
                    value is True or (type(value) is tuple and value)
                ):
                    out.append(prefix + name)
                elif isinstance(value, BaseModel):
                    walk(f"{prefix}{name}.", value)

        walk("", self)
        if self.missing_revocation is MissingRevocation.WARN:
            out.append("missing_revocation=warn")
        if self.roots.extra_trusted_sha256:
            out.append("roots.extra_trusted_sha256")
        if self.snp is not None and self.snp.allowed_platform_info_unknown_bits:
            out.append("snp.allowed_platform_info_unknown_bits")
        if self.tdx is not None:
            out += [
                f"tdx.accepted_tcb_statuses={s.value}"
                for s in self.tdx.accepted_tcb_statuses
                if s.value.startswith("OutOfDate")
            ]
        return out


def load_policy(data: bytes | str) -> Policy:
    """Parse a policy document (JSON); InputError names every problem in one message."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_POLICY_BYTES:
        raise InputError(f"policy is {len(raw)} bytes; the limit is {MAX_POLICY_BYTES}")
    load_json(raw, what="policy")  # depth, duplicate keys, digit limits: typed errors first
    try:
        return Policy.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise InputError(f"invalid policy: {problems}") from None


def _omit_later_defaults(model: BaseModel, data: dict[str, Any]) -> None:
    """Remove from ``data`` (``model``'s JSON dump) every ``DIGEST_OMITTED_AT_DEFAULT`` field
    that holds its default, in ``model`` and every model nested in it."""
    fields = type(model).model_fields
    omitted: frozenset[str] = getattr(type(model), "DIGEST_OMITTED_AT_DEFAULT", frozenset())
    for name in fields:
        value = getattr(model, name)
        if name in omitted and value == fields[name].get_default(call_default_factory=True):
            del data[name]
        elif isinstance(value, BaseModel):
            _omit_later_defaults(value, data[name])
        elif type(value) is tuple:
            for item, dumped in zip(value, data[name], strict=True):
                if isinstance(item, BaseModel):
                    _omit_later_defaults(item, dumped)
