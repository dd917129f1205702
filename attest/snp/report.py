"""Strict parser for the AMD SEV-SNP ``ATTESTATION_REPORT`` (SEV-SNP ABI spec, table 23).

The report is exactly 1184 (0x4A0) bytes, little-endian. Bytes ``[0, 0x2A0)`` are signed by the
AMD Secure Processor; ``[0x2A0, 0x4A0)`` is the signature structure. Report versions 2, 3 and 5
are accepted:

* v2: the original layout (firmware before ABI 1.55).
* v3: adds ``CPUID_FAM_ID``, ``CPUID_MOD_ID`` and ``CPUID_STEP`` at 0x188..0x18A, which name the
  product (and thus the TCB layout) inside the signed bytes.
* v5: adds ``LAUNCH_MIT_VECTOR`` (0x1F8) and ``CURRENT_MIT_VECTOR`` (0x200).

Version 4 and anything newer are refused: a layout we have not read is a layout whose reserved
bytes we cannot check. Every reserved range must be zero, and the error names the range and the
first offending byte, so a bug report points at the exact byte (go-sev-guest's ``abi`` does the
same). Nothing is re-serialised: the parsed object keeps the original bytes and the verifier
hashes exactly ``raw[:0x2A0]``.

This module only parses. Signatures, chains and TCB-vs-certificate checks live in
``attest.snp.verify``; policy (DEBUG, minimum TCB, measurements) is appraised elsewhere from the
typed facts exposed here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from attest.errors import ParseError

#: The ABI fixes the report size; anything else is not a report (the GHCB extended-report buffer
#: that follows it, with the certificate table, is a separate input).
REPORT_SIZE = 0x4A0
#: The signature covers every byte before the signature structure (ABI table 23).
SIGNED_SIZE = 0x2A0
#: Report versions whose layout this parser knows byte for byte.
SUPPORTED_VERSIONS = (2, 3, 5)
#: SIGNATURE_ALGO value for ECDSA P-384 with SHA-384 (ABI table "Signature Algorithm Encodings"),
#: the only algorithm the AMD SP uses.
SIG_ALGO_ECDSA_P384_SHA384 = 1
#: ECDSA signature layout (ABI appendix "ECDSA Signature Format"): R and S are 72-byte
#: little-endian fields, of which a P-384 value uses the low 48 bytes; the rest must be zero.
ECDSA_COMPONENT_FIELD = 72
P384_SCALAR_BYTES = 48
#: Guest VMPLs are 0..3; the report says which VMPL asked for it.
MAX_VMPL = 3

# Offsets (ABI table 23).
OFF_VERSION = 0x00
OFF_GUEST_SVN = 0x04
OFF_POLICY = 0x08
OFF_FAMILY_ID = 0x10
OFF_IMAGE_ID = 0x20
OFF_VMPL = 0x30
OFF_SIGNATURE_ALGO = 0x34
OFF_CURRENT_TCB = 0x38
OFF_PLATFORM_INFO = 0x40
OFF_KEY_INFO = 0x48
OFF_REPORT_DATA = 0x50
OFF_MEASUREMENT = 0x90
OFF_HOST_DATA = 0xC0
OFF_ID_KEY_DIGEST = 0xE0
OFF_AUTHOR_KEY_DIGEST = 0x110
OFF_REPORT_ID = 0x140
OFF_REPORT_ID_MA = 0x160
OFF_REPORTED_TCB = 0x180
OFF_CPUID_FAM_ID = 0x188
OFF_CHIP_ID = 0x1A0
OFF_COMMITTED_TCB = 0x1E0
OFF_CURRENT_VERSION = 0x1E8
OFF_COMMITTED_VERSION = 0x1EC
OFF_LAUNCH_TCB = 0x1F0
OFF_LAUNCH_MIT_VECTOR = 0x1F8
OFF_CURRENT_MIT_VECTOR = 0x200
OFF_SIGNATURE = SIGNED_SIZE

# GUEST_POLICY bits (ABI table "Guest Policy Structure").
POLICY_SMT = 1 << 16
POLICY_RESERVED_MUST_BE_ONE = 1 << 17
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
POLICY_SINGLE_SOCKET = 1 << 20
POLICY_CXL_ALLOW = 1 << 21
POLICY_MEM_AES_256_XTS = 1 << 22
POLICY_RAPL_DIS = 1 << 23
POLICY_CIPHERTEXT_HIDING = 1 << 24
POLICY_PAGE_SWAP_DISABLE = 1 << 25
#: Bits 63:26 are reserved and must be zero (ABI 1.57); a guest policy bit we do not know is a
#: restriction or permission whose meaning we cannot report, so it is refused.
POLICY_RESERVED_MASK = ~((1 << 26) - 1) & 0xFFFF_FFFF_FFFF_FFFF

# PLATFORM_INFO bits (ABI table 23 / "PLATFORM_INFO field").
PLAT_SMT_EN = 1 << 0
PLAT_TSME_EN = 1 << 1
PLAT_ECC_EN = 1 << 2
PLAT_RAPL_DIS = 1 << 3
PLAT_CIPHERTEXT_HIDING_EN = 1 << 4
PLAT_ALIAS_CHECK_COMPLETE = 1 << 5
PLAT_TIO_EN = 1 << 7
PLAT_KNOWN_MASK = (
    PLAT_SMT_EN
    | PLAT_TSME_EN
    | PLAT_ECC_EN
    | PLAT_RAPL_DIS
    | PLAT_CIPHERTEXT_HIDING_EN
    | PLAT_ALIAS_CHECK_COMPLETE
    | PLAT_TIO_EN
)

# KEY_INFO (0x48): bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_ID, bits 4:2 SIGNING_KEY, 31:5 MBZ.
KEY_INFO_AUTHOR_KEY_EN = 1 << 0
KEY_INFO_MASK_CHIP_ID = 1 << 1
KEY_INFO_SIGNING_KEY_SHIFT = 2
KEY_INFO_SIGNING_KEY_MASK = 0b111
KEY_INFO_RESERVED_MASK = 0xFFFF_FFE0


class Product(StrEnum):
    """AMD EPYC product lines with SEV-SNP. The value is the name AMD's KDS and VCEKs use."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"


class SigningKey(StrEnum):
    """Which key signed the report (KEY_INFO.SIGNING_KEY): 0 VCEK, 1 VLEK, 7 none; 2-6 reserved."""

    VCEK = "vcek"
    VLEK = "vlek"
    NONE = "none"


_SIGNING_KEY_CODES = {0: SigningKey.VCEK, 1: SigningKey.VLEK, 7: SigningKey.NONE}


def product_from_cpuid(family: int, model: int) -> Product | None:
    """The product line from the report's CPUID family/model (AMD PPRs), or None if unknown.

    Family 19h models 00h-0Fh are Milan, 10h-1Fh and A0h-AFh (Bergamo, Siena) are Genoa; family
    1Ah models 00h-1Fh are Turin. An unknown pair is not an error here: the verifier then takes
    the product from the certificate and the appraisal sees that the CPUID did not name one.
    """
    if family == 0x19:
        if model <= 0x0F:
            return Product.MILAN
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return Product.GENOA
    if family == 0x1A and model <= 0x1F:
        return Product.TURIN
    return None


def _fail(message: str, field: str, offset: int) -> ParseError:
    return ParseError(message, field=field, offset=offset)


def _u32(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", data, off)[0])


def _u64(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<Q", data, off)[0])


def _require_zero(data: bytes, start: int, end: int, field: str, *, base: int = 0) -> None:
    """Every byte in ``data[start:end]`` must be zero; name the range and the first bad byte.

    ``base`` is where ``data`` sits in the report, so offsets in errors are report offsets.
    """
    if not any(data[start:end]):
        return
    for i in range(start, end):
        if data[i]:
            raise _fail(
                f"reserved byte is 0x{data[i]:02x}, must be zero",
                f"{field} [0x{base + start:x}..0x{base + end - 1:x}]",
                base + i,
            )


@dataclass(frozen=True)
class GuestPolicy:
    """GUEST_POLICY (0x08): what the guest owner allowed at launch; enforced by the AMD SP."""

    raw: int
    abi_minor: int
    abi_major: int
    smt: bool
    migrate_ma: bool
    debug: bool
    single_socket: bool
    cxl_allow: bool
    mem_aes_256_xts: bool
    rapl_dis: bool
    ciphertext_hiding: bool
    page_swap_disable: bool

    @classmethod
    def from_int(cls, raw: int) -> GuestPolicy:
        if not raw & POLICY_RESERVED_MUST_BE_ONE:
            raise _fail("policy bit 17 is reserved and must be 1", "POLICY", OFF_POLICY)
        if raw & POLICY_RESERVED_MASK:
            raise _fail(
                f"policy bits 63:26 are reserved and must be zero (policy 0x{raw:x})",
                "POLICY",
                OFF_POLICY,
            )
        return cls(
            raw=raw,
            abi_minor=raw & 0xFF,
            abi_major=(raw >> 8) & 0xFF,
            smt=bool(raw & POLICY_SMT),
            migrate_ma=bool(raw & POLICY_MIGRATE_MA),
            debug=bool(raw & POLICY_DEBUG),
            single_socket=bool(raw & POLICY_SINGLE_SOCKET),
            cxl_allow=bool(raw & POLICY_CXL_ALLOW),
            mem_aes_256_xts=bool(raw & POLICY_MEM_AES_256_XTS),
            rapl_dis=bool(raw & POLICY_RAPL_DIS),
            ciphertext_hiding=bool(raw & POLICY_CIPHERTEXT_HIDING),
            page_swap_disable=bool(raw & POLICY_PAGE_SWAP_DISABLE),
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "raw": f"0x{self.raw:x}",
            "abi_minor": self.abi_minor,
            "abi_major": self.abi_major,
            "smt": self.smt,
            "migrate_ma": self.migrate_ma,
            "debug": self.debug,
            "single_socket": self.single_socket,
            "cxl_allow": self.cxl_allow,
            "mem_aes_256_xts": self.mem_aes_256_xts,
            "rapl_dis": self.rapl_dis,
            "ciphertext_hiding": self.ciphertext_hiding,
            "page_swap_disable": self.page_swap_disable,
        }


@dataclass(frozen=True)
class PlatformInfo:
    """PLATFORM_INFO (0x40): how the host platform was configured when the report was made.

    Bits AMD has not defined yet are kept in ``unknown_bits`` rather than refused: they are facts
    signed by the AMD SP about newer firmware (Project Oak reports seeing them in the wild), not
    structure we depend on, and refusing them would make every report from that firmware
    unverifiable. Appraisal sees them and can refuse them.
    """

    raw: int
    smt_enabled: bool
    tsme_enabled: bool
    ecc_enabled: bool
    rapl_disabled: bool
    ciphertext_hiding_enabled: bool
    alias_check_complete: bool
    tio_enabled: bool
    unknown_bits: int

    @classmethod
    def from_int(cls, raw: int) -> PlatformInfo:
        return cls(
            raw=raw,
            smt_enabled=bool(raw & PLAT_SMT_EN),
            tsme_enabled=bool(raw & PLAT_TSME_EN),
            ecc_enabled=bool(raw & PLAT_ECC_EN),
            rapl_disabled=bool(raw & PLAT_RAPL_DIS),
            ciphertext_hiding_enabled=bool(raw & PLAT_CIPHERTEXT_HIDING_EN),
            alias_check_complete=bool(raw & PLAT_ALIAS_CHECK_COMPLETE),
            tio_enabled=bool(raw & PLAT_TIO_EN),
            unknown_bits=raw & ~PLAT_KNOWN_MASK,
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "raw": f"0x{self.raw:x}",
            "smt_enabled": self.smt_enabled,
            "tsme_enabled": self.tsme_enabled,
            "ecc_enabled": self.ecc_enabled,
            "rapl_disabled": self.rapl_disabled,
            "ciphertext_hiding_enabled": self.ciphertext_hiding_enabled,
            "alias_check_complete": self.alias_check_complete,
            "tio_enabled": self.tio_enabled,
            "unknown_bits": f"0x{self.unknown_bits:x}",
        }


@dataclass(frozen=True)
class KeyInfo:
    """KEY_INFO (0x48): which key signed, whether CHIP_ID is masked, whether an author key exists."""

    raw: int
    author_key_en: bool
    mask_chip_id: bool
    signing_key: SigningKey

    @classmethod
    def from_int(cls, raw: int) -> KeyInfo:
        if raw & KEY_INFO_RESERVED_MASK:
            raise _fail(
                f"KEY_INFO bits 31:5 are reserved and must be zero (0x{raw:x})",
                "KEY_INFO",
                OFF_KEY_INFO,
            )
        code = (raw >> KEY_INFO_SIGNING_KEY_SHIFT) & KEY_INFO_SIGNING_KEY_MASK
        key = _SIGNING_KEY_CODES.get(code)
        if key is None:
            raise _fail(f"SIGNING_KEY value {code} is reserved", "KEY_INFO", OFF_KEY_INFO)
        return cls(
            raw=raw,
            author_key_en=bool(raw & KEY_INFO_AUTHOR_KEY_EN),
            mask_chip_id=bool(raw & KEY_INFO_MASK_CHIP_ID),
            signing_key=key,
        )


@dataclass(frozen=True)
class TcbVersion:
    """A TCB_VERSION decoded with its product's layout (ABI tables 3 and 4).

    Milan and Genoa: ``[BOOT_LOADER, TEE, rsvd x4, SNP, MICROCODE]``.
    Turin and later: ``[FMC, BOOT_LOADER, TEE, SNP, rsvd x3, MICROCODE]``.
    The same 8 bytes mean different things on different products, which is why decoding needs
    the product and why the verifier cross-checks it against the VCEK.
    """

    raw: bytes
    product: Product
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None

    @classmethod
    def decode(
        cls, raw: bytes, product: Product, *, field: str = "TCB_VERSION", offset: int = 0
    ) -> TcbVersion:
        """Decode 8 bytes; reserved bytes must be zero (``offset`` locates them in the report)."""
        if len(raw) != 8:
            raise ParseError(f"a TCB_VERSION is 8 bytes, got {len(raw)}", field=field)
        if product is Product.TURIN:
            _require_zero(raw, 4, 7, f"{field} reserved", base=offset)
            return cls(
                raw,
                product,
                bootloader=raw[1],
                tee=raw[2],
                snp=raw[3],
                microcode=raw[7],
                fmc=raw[0],
            )
        _require_zero(raw, 2, 6, f"{field} reserved", base=offset)
        return cls(
            raw, product, bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7], fmc=None
        )

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "raw": self.raw.hex(),
            "bootloader": self.bootloader,
            "tee": self.tee,
            "snp": self.snp,
            "microcode": self.microcode,
        }
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out


@dataclass(frozen=True)
class FirmwareVersion:
    """Secure firmware ABI version (major.minor.build), stored in the report as build, minor, major."""

    major: int
    minor: int
    build: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.build}"


@dataclass(frozen=True)
class Cpuid:
    """CPUID family/model/stepping (report v3+), inside the signed bytes."""

    family: int
    model: int
    stepping: int


TcbName = Literal["current", "reported", "committed", "launch"]
TCB_NAMES: tuple[TcbName, ...] = ("current", "reported", "committed", "launch")
_TCB_OFFSETS: dict[str, int] = {
    "current": OFF_CURRENT_TCB,
    "reported": OFF_REPORTED_TCB,
    "committed": OFF_COMMITTED_TCB,
    "launch": OFF_LAUNCH_TCB,
}


@dataclass(frozen=True)
class AttestationReport:
    """A parsed SEV-SNP report. ``raw`` is the exact input; ``signed_bytes`` is what AMD signed.

    TCB values are kept as their 8 raw bytes because their layout depends on the product; use
    ``tcb(name, product)`` to decode one (the verifier does, with the product it established).
    """

    raw: bytes
    version: int
    guest_svn: int
    policy: GuestPolicy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb_raw: bytes
    platform_info: PlatformInfo
    key_info: KeyInfo
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb_raw: bytes
    cpuid: Cpuid | None
    chip_id: bytes
    committed_tcb_raw: bytes
    current_version: FirmwareVersion
    committed_version: FirmwareVersion
    launch_tcb_raw: bytes
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: int
    signature_s: int

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def signing_key(self) -> SigningKey:
        return self.key_info.signing_key

    @property
    def cpuid_product(self) -> Product | None:
        """The product named by the signed CPUID fields (v3+), or None (v2, or unknown model)."""
        if self.cpuid is None:
            return None
        return product_from_cpuid(self.cpuid.family, self.cpuid.model)

    def tcb(self, name: TcbName, product: Product) -> TcbVersion:
        """Decode one of the four TCB_VERSION fields with ``product``'s layout."""
        off = _TCB_OFFSETS[name]
        return TcbVersion.decode(
            self.raw[off : off + 8], product, field=f"{name.upper()}_TCB", offset=off
        )

    def as_dict(self, product: Product | None = None) -> dict[str, object]:
        """Every field, JSON-ready (bytes as hex). TCBs are decoded when the product is known."""
        product = product or self.cpuid_product
        tcbs: dict[str, object] = {}
        for name, off in _TCB_OFFSETS.items():
            raw = self.raw[off : off + 8]
            tcbs[name] = (
                TcbVersion.decode(raw, product, offset=off).as_dict() if product else raw.hex()
            )
        return {
            "version": self.version,
            "guest_svn": self.guest_svn,
            "policy": self.policy.as_dict(),
            "family_id": self.family_id.hex(),
            "image_id": self.image_id.hex(),
            "vmpl": self.vmpl,
            "signature_algo": self.signature_algo,
            "platform_info": self.platform_info.as_dict(),
            "signing_key": self.key_info.signing_key.value,
            "author_key_en": self.key_info.author_key_en,
            "mask_chip_id": self.key_info.mask_chip_id,
            "report_data": self.report_data.hex(),
            "measurement": self.measurement.hex(),
            "host_data": self.host_data.hex(),
            "id_key_digest": self.id_key_digest.hex(),
            "author_key_digest": self.author_key_digest.hex(),
            "report_id": self.report_id.hex(),
            "report_id_ma": self.report_id_ma.hex(),
            "cpuid": None
            if self.cpuid is None
            else {
                "family": self.cpuid.family,
                "model": self.cpuid.model,
                "stepping": self.cpuid.stepping,
            },
            "chip_id": self.chip_id.hex(),
            "tcb": tcbs,
            "current_version": str(self.current_version),
            "committed_version": str(self.committed_version),
            "launch_mit_vector": None
            if self.launch_mit_vector is None
            else f"0x{self.launch_mit_vector:x}",
            "current_mit_vector": None
            if self.current_mit_vector is None
            else f"0x{self.current_mit_vector:x}",
        }


def _parse_signature(data: bytes, signing_key: SigningKey, algo: int) -> tuple[int, int]:
    """Check the signature structure's shape; return (r, s) as integers (0, 0 if unsigned)."""
    sig = OFF_SIGNATURE
    if signing_key is SigningKey.NONE:
        # An unsigned report (SIGNING_KEY = 7) carries no signature: the whole structure is zero.
        _require_zero(data, sig, REPORT_SIZE, "SIGNATURE (unsigned report)")
        return 0, 0
    if algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise _fail(
            f"signature algorithm {algo} is not ECDSA P-384 with SHA-384 (1)",
            "SIGNATURE_ALGO",
            OFF_SIGNATURE_ALGO,
        )
    r_off, s_off = sig, sig + ECDSA_COMPONENT_FIELD
    _require_zero(data, r_off + P384_SCALAR_BYTES, s_off, "SIGNATURE.R padding")
    _require_zero(
        data, s_off + P384_SCALAR_BYTES, s_off + ECDSA_COMPONENT_FIELD, "SIGNATURE.S padding"
    )
    _require_zero(data, s_off + ECDSA_COMPONENT_FIELD, REPORT_SIZE, "SIGNATURE reserved")
    r = int.from_bytes(data[r_off : r_off + P384_SCALAR_BYTES], "little")
    s = int.from_bytes(data[s_off : s_off + P384_SCALAR_BYTES], "little")
    return r, s


def parse_report(data: bytes) -> AttestationReport:
    """Parse one report strictly; raise ``ParseError`` naming the field and offset on any flaw."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ParseError("an SEV-SNP report must be bytes")
    data = bytes(data)
    if len(data) != REPORT_SIZE:
        raise ParseError(
            f"an SEV-SNP attestation report is exactly {REPORT_SIZE} bytes, got {len(data)}"
        )
    version = _u32(data, OFF_VERSION)
    if version not in SUPPORTED_VERSIONS:
        raise _fail(
            f"unsupported report version {version} (supported: "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))})",
            "VERSION",
            OFF_VERSION,
        )
    policy = GuestPolicy.from_int(_u64(data, OFF_POLICY))
    vmpl = _u32(data, OFF_VMPL)
    if vmpl > MAX_VMPL:
        raise _fail(f"VMPL {vmpl} is not 0..{MAX_VMPL}", "VMPL", OFF_VMPL)
    algo = _u32(data, OFF_SIGNATURE_ALGO)
    key_info = KeyInfo.from_int(_u32(data, OFF_KEY_INFO))
    _require_zero(data, 0x4C, OFF_REPORT_DATA, "reserved")

    cpuid: Cpuid | None = None
    if version >= 3:
        cpuid = Cpuid(
            family=data[OFF_CPUID_FAM_ID],
            model=data[OFF_CPUID_FAM_ID + 1],
            stepping=data[OFF_CPUID_FAM_ID + 2],
        )
        _require_zero(data, OFF_CPUID_FAM_ID + 3, OFF_CHIP_ID, "reserved")
    else:
        _require_zero(data, OFF_CPUID_FAM_ID, OFF_CHIP_ID, "reserved")

    chip_id = data[OFF_CHIP_ID:OFF_COMMITTED_TCB]
    if key_info.mask_chip_id and any(chip_id):
        raise _fail("MASK_CHIP_ID is set but CHIP_ID is not zero", "CHIP_ID", OFF_CHIP_ID)

    _require_zero(data, OFF_CURRENT_VERSION + 3, OFF_COMMITTED_VERSION, "reserved")
    _require_zero(data, OFF_COMMITTED_VERSION + 3, OFF_LAUNCH_TCB, "reserved")

    launch_mit: int | None = None
    current_mit: int | None = None
    if version >= 5:
        launch_mit = _u64(data, OFF_LAUNCH_MIT_VECTOR)
        current_mit = _u64(data, OFF_CURRENT_MIT_VECTOR)
        _require_zero(data, OFF_CURRENT_MIT_VECTOR + 8, SIGNED_SIZE, "reserved")
    else:
        _require_zero(data, OFF_LAUNCH_MIT_VECTOR, SIGNED_SIZE, "reserved")

    r, s = _parse_signature(data, key_info.signing_key, algo)

    def version_at(off: int) -> FirmwareVersion:
        return FirmwareVersion(major=data[off + 2], minor=data[off + 1], build=data[off])

    report = AttestationReport(
        raw=data,
        version=version,
        guest_svn=_u32(data, OFF_GUEST_SVN),
        policy=policy,
        family_id=data[OFF_FAMILY_ID:OFF_IMAGE_ID],
        image_id=data[OFF_IMAGE_ID:OFF_VMPL],
        vmpl=vmpl,
        signature_algo=algo,
        current_tcb_raw=data[OFF_CURRENT_TCB:OFF_PLATFORM_INFO],
        platform_info=PlatformInfo.from_int(_u64(data, OFF_PLATFORM_INFO)),
        key_info=key_info,
        report_data=data[OFF_REPORT_DATA:OFF_MEASUREMENT],
        measurement=data[OFF_MEASUREMENT:OFF_HOST_DATA],
        host_data=data[OFF_HOST_DATA:OFF_ID_KEY_DIGEST],
        id_key_digest=data[OFF_ID_KEY_DIGEST:OFF_AUTHOR_KEY_DIGEST],
        author_key_digest=data[OFF_AUTHOR_KEY_DIGEST:OFF_REPORT_ID],
        report_id=data[OFF_REPORT_ID:OFF_REPORT_ID_MA],
        report_id_ma=data[OFF_REPORT_ID_MA:OFF_REPORTED_TCB],
        reported_tcb_raw=data[OFF_REPORTED_TCB:OFF_CPUID_FAM_ID],
        cpuid=cpuid,
        chip_id=chip_id,
        committed_tcb_raw=data[OFF_COMMITTED_TCB:OFF_CURRENT_VERSION],
        current_version=version_at(OFF_CURRENT_VERSION),
        committed_version=version_at(OFF_COMMITTED_VERSION),
        launch_tcb_raw=data[OFF_LAUNCH_TCB:OFF_LAUNCH_MIT_VECTOR],
        launch_mit_vector=launch_mit,
        current_mit_vector=current_mit,
        signature_r=r,
        signature_s=s,
    )
    # When the signed CPUID names the product, the TCB layout is known now: check its reserved
    # bytes here. For v2 reports the verifier does it once the VCEK has named the product.
    product = report.cpuid_product
    if product is not None:
        for name in TCB_NAMES:
            report.tcb(name, product)
    return report
