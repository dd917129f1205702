"""Strict parser for Intel TDX quotes, versions 4 and 5 (ECDSA-256 with P-256, TEE type TDX).

Why strict: every byte of the header and TD report is covered by the attestation key's
signature, but the signature data that follows (QE report, auth data, PCK chain) is a nested
set of length-prefixed records that an attacker on the host can reshape freely. Each length
must equal exactly what its record holds, reserved bytes must be zero, and nothing may follow
the quote unless the caller declares a zero-filled capture buffer. Parsing only reads bytes:
signatures, chains and collateral are checked in ``attest.tdx.verify``.

Layout (all integers little-endian; offsets in bytes):

* header, 48 B: version u16 (4 or 5), attestation key type u16 (2 = ECDSA-256-with-P-256),
  TEE type u32 (0x81 = TDX), reserved 4 B (zero), QE vendor id 16 B, user data 20 B;
* v4: TD report, 584 B (TDX 1.0);
  v5: body type u16 (2 = TDX 1.0 TD report, 3 = TDX 1.5 TD report) and body size u32
  (584 or 648), then the body;
* signature data length u32, then: ECDSA signature 64 B (r || s, big-endian) over
  header || [v5 body descriptor] || body; attestation public key 64 B (x || y);
  certification data type u16 (6 = QE report certification data) and size u32; inside it
  the QE report 384 B, the QE report signature 64 B, QE auth data (size u16 + bytes) and the
  nested certification data type u16 (5 = PCK certificate chain, PEM) and size u32.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from attest.errors import ParseError

#: Largest buffer handed to the parser (quote plus any declared capture padding). Real quotes
#: with embedded PCK chains are about 5 KB; capture buffers seen in the wild are 8000 B.
MAX_QUOTE_BUFFER_BYTES = 64 * 1024
HEADER_SIZE = 48
TD_REPORT10_SIZE = 584
TD_REPORT15_SIZE = 648
V5_BODY_DESCRIPTOR_SIZE = 6
QE_REPORT_SIZE = 384
ECDSA_SIGNATURE_SIZE = 64
ATTESTATION_KEY_SIZE = 64
#: Smallest signature data: signature, key, cert-data header, QE report, QE signature, auth
#: data length, nested cert-data header (each with empty variable parts).
MIN_SIGNATURE_DATA_SIZE = 64 + 64 + 6 + QE_REPORT_SIZE + 64 + 2 + 6
#: Intel's QE writes 32 bytes of QE auth data; the u16 field would allow 64 KiB. A larger
#: value is not something a QE produces and only costs memory.
MAX_QE_AUTH_DATA_BYTES = 1024
#: A PCK chain is three PEM certificates of under 1.3 KB each (about 3.7 KB in all).
MAX_PCK_CHAIN_BYTES = 16 * 1024
#: The PCK chain holds leaf, Platform/Processor CA and root; a few more are refused later by
#: the chain check, many more are refused here.
MAX_PCK_CHAIN_CERTS = 5

QUOTE_VERSION_4 = 4
QUOTE_VERSION_5 = 5
ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_TDX = 0x81
BODY_TYPE_TD_REPORT10 = 2
BODY_TYPE_TD_REPORT15 = 3
CERT_DATA_PCK_CHAIN = 5
CERT_DATA_QE_REPORT = 6
#: Intel's QE vendor id (939A7233-F79C-4CA9-940A-0DB3957F0607); checked by the verifier.
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

# TD_ATTRIBUTES bits (Intel TDX module ABI, TD_PARAMS.ATTRIBUTES, reported in TDINFO_STRUCT and
# the quote's TD report). The host VMM chooses them when it creates the TD and they are *not*
# part of MRTD, so only an appraisal of this field tells a verifier what the host asked for.
# Groups: TUD (bits 7:0, "TD under debug": any set bit means the TD is not to be trusted), SEC
# (bits 31:8, attributes that change the TD's security), OTHER (bits 63:32).
#: Bit 0, TUD.DEBUG: the host VMM can read and write the TD's private memory and CPU state.
TD_ATTR_DEBUG = 1 << 0
#: Bit 28, SEC.SEPT_VE_DISABLE: an EPT violation on a pending (not yet accepted) private page is
#: not turned into a #VE in the guest. Clear, the host can remove or block private pages and
#: make the guest take #VEs at places it cannot handle them (Linux refuses to boot a non-debug
#: TD without it unless the module lets the guest turn those #VEs off itself: TD_CTLS).
TD_ATTR_SEPT_VE_DISABLE = 1 << 28
#: Bit 29, SEC.MIGRATABLE: the TD may be live-migrated: a Migration TD can export its state,
#: memory included, to another platform that this quote does not attest.
TD_ATTR_MIGRATABLE = 1 << 29
#: Bit 30, SEC.PKS: the TD may use supervisor protection keys (a guest hardening feature).
TD_ATTR_PKS = 1 << 30
#: Bit 31, SEC.KL: the TD may use Key Locker (AES keys wrapped by a CPU-internal key).
TD_ATTR_KL = 1 << 31
#: Bit 63, OTHER.PERFMON: the TD may use the performance monitoring unit (perfmon and
#: PERF_METRICS).
TD_ATTR_PERFMON = 1 << 63
#: The bits the TDX 1.0 ABI defines; lessee appraises each of them by name.
TD_ATTR_NAMED_BITS = {
    "debug": TD_ATTR_DEBUG,
    "sept_ve_disable": TD_ATTR_SEPT_VE_DISABLE,
    "migratable": TD_ATTR_MIGRATABLE,
    "pks": TD_ATTR_PKS,
    "kl": TD_ATTR_KL,
    "perfmon": TD_ATTR_PERFMON,
}
#: Every other bit: reserved (must be zero) in the TDX 1.0 ABI, i.e. TUD bits 7:1, SEC bits
#: 27:8 and bits 62:32. Later modules give some of them meanings (Linux's asm/shared/tdx.h:
#: 4-6 profiling, which are TUD bits; 16 ICSSD; 27 LASS; 62 TPA) that lessee does not appraise
#: yet, so a set bit here is refused unless the policy names it (docs/tdx.md, "TD attributes").
TD_ATTR_RESERVED_MASK = ((1 << 64) - 1) & ~sum(TD_ATTR_NAMED_BITS.values())

#: One PEM certificate block exactly as Intel's QE writes it (and every real quote in the vectors
#: has it): LF line ends, the END line ended too. The PEM parser would also take CRLF or a
#: missing last newline, but each such variant is a second encoding of the same quote (found by
#: the mutation suite: the chain's last newline set to NUL was accepted, since one trailing NUL
#: is stripped as the C-string end), and the quote's exact bytes are what the log archives.
_PEM_BLOCK = rb"-----BEGIN CERTIFICATE-----\n(?:[A-Za-z0-9+/=]+\n)+-----END CERTIFICATE-----\n"
_PEM_CHAIN = re.compile(rb"(?:" + _PEM_BLOCK + rb")+")


class TdxQuoteParseError(ParseError):
    """A TDX quote that does not follow the v4/v5 layout (field and offset say where)."""


@dataclass(frozen=True)
class QuoteHeader:
    """The 48-byte quote header, signed by the attestation key."""

    version: int
    att_key_type: int
    tee_type: int
    qe_vendor_id: bytes
    user_data: bytes
    raw: bytes


@dataclass(frozen=True)
class TdReport:
    """TD report body (TDX 1.0, 584 B; TDX 1.5, 648 B), signed by the attestation key.

    These are the facts a policy appraises: MRTD and RTMRs measure the TD, MRSEAM and
    MRSIGNERSEAM the TDX module, TD_ATTRIBUTES carries DEBUG, REPORTDATA the session binding.
    """

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    #: TDX 1.5 only (v5 body type 3); ``None`` for a TDX 1.0 body.
    tee_tcb_svn_2: bytes | None
    mr_service_td: bytes | None
    raw: bytes

    @property
    def td_attributes_value(self) -> int:
        """TD_ATTRIBUTES as the 64-bit little-endian integer the TDX module defines."""
        return int.from_bytes(self.td_attributes, "little")

    @property
    def xfam_value(self) -> int:
        return int.from_bytes(self.xfam, "little")

    @property
    def debug(self) -> bool:
        """TD_ATTRIBUTES.DEBUG: the host can read and write this TD's memory and registers."""
        return bool(self.td_attributes_value & TD_ATTR_DEBUG)

    @property
    def sept_ve_disable(self) -> bool:
        """TD_ATTRIBUTES.SEPT_VE_DISABLE: no #VE on EPT violations of pending private pages."""
        return bool(self.td_attributes_value & TD_ATTR_SEPT_VE_DISABLE)

    @property
    def migratable(self) -> bool:
        """TD_ATTRIBUTES.MIGRATABLE: a Migration TD may export this TD to another platform."""
        return bool(self.td_attributes_value & TD_ATTR_MIGRATABLE)

    @property
    def pks(self) -> bool:
        """TD_ATTRIBUTES.PKS: the TD may use supervisor protection keys."""
        return bool(self.td_attributes_value & TD_ATTR_PKS)

    @property
    def kl(self) -> bool:
        """TD_ATTRIBUTES.KL: the TD may use Key Locker."""
        return bool(self.td_attributes_value & TD_ATTR_KL)

    @property
    def perfmon(self) -> bool:
        """TD_ATTRIBUTES.PERFMON: the TD may use the performance monitoring unit."""
        return bool(self.td_attributes_value & TD_ATTR_PERFMON)

    @property
    def td_attribute_flags(self) -> dict[str, bool]:
        """Each named TD_ATTRIBUTES bit (``TD_ATTR_NAMED_BITS``) as a boolean, in bit order."""
        value = self.td_attributes_value
        return {name: bool(value & bit) for name, bit in TD_ATTR_NAMED_BITS.items()}

    @property
    def td_attributes_reserved_bits(self) -> tuple[int, ...]:
        """Bit numbers set in TD_ATTRIBUTES outside the named TDX 1.0 bits, lowest first."""
        reserved = self.td_attributes_value & TD_ATTR_RESERVED_MASK
        return tuple(i for i in range(64) if reserved >> i & 1)

    @property
    def tdx_module_version(self) -> int:
        """TEE_TCB_SVN[1]: the TDX module major version (0 = pre-1.5 numbering)."""
        return self.tee_tcb_svn[1]

    @property
    def tdx_module_isv_svn(self) -> int:
        """TEE_TCB_SVN[0]: the TDX module's security version number."""
        return self.tee_tcb_svn[0]


@dataclass(frozen=True)
class QeReport:
    """The quoting enclave's SGX report (384 B), signed by the PCK key."""

    cpu_svn: bytes
    misc_select: int
    isv_ext_prod_id: bytes
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes
    raw: bytes


@dataclass(frozen=True)
class QuoteSignatureData:
    """Everything after the signed region: signature, attestation key, QE certification."""

    signature: bytes
    attestation_key: bytes
    qe_report: QeReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    #: The exact bytes of certification data type 5 (PEM, possibly with a trailing NUL).
    pck_chain_pem: bytes
    raw: bytes


@dataclass(frozen=True)
class TdxQuote:
    """A parsed TDX quote. ``raw`` is the quote alone; ``signed_region`` what the key signed."""

    header: QuoteHeader
    body_type: int
    body: TdReport
    signature_data: QuoteSignatureData
    raw: bytes
    signed_region: bytes
    #: Zero bytes that followed the quote in a declared capture buffer (0 when none).
    padding_length: int

    @property
    def version(self) -> int:
        return self.header.version


class _Reader:
    """Bounded little-endian cursor; every read names its field for the error message."""

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = start
        self.end = len(data) if end is None else end

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise TdxQuoteParseError(
                f"truncated: need {n} bytes, {self.end - self.pos} left",
                offset=self.pos,
                field=field,
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self, field: str) -> int:
        value: int = struct.unpack("<H", self.take(2, field))[0]
        return value

    def u32(self, field: str) -> int:
        value: int = struct.unpack("<I", self.take(4, field))[0]
        return value


def _zero(value: bytes, field: str, offset: int) -> None:
    if any(value):
        raise TdxQuoteParseError("reserved bytes are not zero", offset=offset, field=field)


def _parse_header(r: _Reader) -> QuoteHeader:
    start = r.pos
    version = r.u16("header.version")
    if version not in (QUOTE_VERSION_4, QUOTE_VERSION_5):
        raise TdxQuoteParseError(
            f"quote version {version} is not supported (4 or 5)", offset=0, field="header.version"
        )
    att_key_type = r.u16("header.att_key_type")
    if att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise TdxQuoteParseError(
            f"attestation key type {att_key_type} is not 2 (ECDSA-256-with-P-256)",
            offset=2,
            field="header.att_key_type",
        )
    tee_type = r.u32("header.tee_type")
    if tee_type != TEE_TYPE_TDX:
        raise TdxQuoteParseError(
            f"TEE type {tee_type:#x} is not 0x81 (TDX)", offset=4, field="header.tee_type"
        )
    _zero(r.take(4, "header.reserved"), "header.reserved", 8)
    qe_vendor_id = r.take(16, "header.qe_vendor_id")
    user_data = r.take(20, "header.user_data")
    return QuoteHeader(
        version=version,
        att_key_type=att_key_type,
        tee_type=tee_type,
        qe_vendor_id=qe_vendor_id,
        user_data=user_data,
        raw=r.data[start : r.pos],
    )


def _parse_td_report(r: _Reader, size: int) -> TdReport:
    start = r.pos
    tee_tcb_svn = r.take(16, "body.tee_tcb_svn")
    mr_seam = r.take(48, "body.mr_seam")
    mr_signer_seam = r.take(48, "body.mr_signer_seam")
    seam_attributes = r.take(8, "body.seam_attributes")
    td_attributes = r.take(8, "body.td_attributes")
    xfam = r.take(8, "body.xfam")
    mr_td = r.take(48, "body.mr_td")
    mr_config_id = r.take(48, "body.mr_config_id")
    mr_owner = r.take(48, "body.mr_owner")
    mr_owner_config = r.take(48, "body.mr_owner_config")
    rtmrs = (
        r.take(48, "body.rtmr0"),
        r.take(48, "body.rtmr1"),
        r.take(48, "body.rtmr2"),
        r.take(48, "body.rtmr3"),
    )
    report_data = r.take(64, "body.report_data")
    tee_tcb_svn_2: bytes | None = None
    mr_service_td: bytes | None = None
    if size == TD_REPORT15_SIZE:
        tee_tcb_svn_2 = r.take(16, "body.tee_tcb_svn_2")
        mr_service_td = r.take(48, "body.mr_service_td")
    return TdReport(
        tee_tcb_svn=tee_tcb_svn,
        mr_seam=mr_seam,
        mr_signer_seam=mr_signer_seam,
        seam_attributes=seam_attributes,
        td_attributes=td_attributes,
        xfam=xfam,
        mr_td=mr_td,
        mr_config_id=mr_config_id,
        mr_owner=mr_owner,
        mr_owner_config=mr_owner_config,
        rtmrs=rtmrs,
        report_data=report_data,
        tee_tcb_svn_2=tee_tcb_svn_2,
        mr_service_td=mr_service_td,
        raw=r.data[start : r.pos],
    )


def parse_qe_report(data: bytes, *, base_offset: int = 0) -> QeReport:
    """Parse the 384-byte SGX report of the quoting enclave; reserved bytes must be zero."""
    if len(data) != QE_REPORT_SIZE:
        raise TdxQuoteParseError(
            f"QE report is {len(data)} bytes, expected {QE_REPORT_SIZE}",
            offset=base_offset,
            field="qe_report",
        )
    r = _Reader(data)

    def reserved(n: int, name: str) -> None:
        at = base_offset + r.pos
        _zero(r.take(n, name), name, at)

    cpu_svn = r.take(16, "qe_report.cpu_svn")
    misc_select = r.u32("qe_report.misc_select")
    reserved(12, "qe_report.reserved1")
    isv_ext_prod_id = r.take(16, "qe_report.isv_ext_prod_id")
    attributes = r.take(16, "qe_report.attributes")
    mr_enclave = r.take(32, "qe_report.mr_enclave")
    reserved(32, "qe_report.reserved2")
    mr_signer = r.take(32, "qe_report.mr_signer")
    reserved(32, "qe_report.reserved3")
    config_id = r.take(64, "qe_report.config_id")
    isv_prod_id = r.u16("qe_report.isv_prod_id")
    isv_svn = r.u16("qe_report.isv_svn")
    config_svn = r.u16("qe_report.config_svn")
    reserved(42, "qe_report.reserved4")
    isv_family_id = r.take(16, "qe_report.isv_family_id")
    report_data = r.take(64, "qe_report.report_data")
    return QeReport(
        cpu_svn=cpu_svn,
        misc_select=misc_select,
        isv_ext_prod_id=isv_ext_prod_id,
        attributes=attributes,
        mr_enclave=mr_enclave,
        mr_signer=mr_signer,
        config_id=config_id,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        config_svn=config_svn,
        isv_family_id=isv_family_id,
        report_data=report_data,
        raw=bytes(data),
    )


def _check_pem_chain(pem: bytes, offset: int) -> None:
    """The PCK chain must be PEM certificate blocks and nothing else (one trailing NUL allowed).

    Intel's QE stores the chain as a C string, so real quotes end it with one NUL byte; any
    other byte outside a certificate block would be unsigned data smuggled into the quote.
    """
    body = pem[:-1] if pem.endswith(b"\x00") else pem
    if not _PEM_CHAIN.fullmatch(body):
        raise TdxQuoteParseError(
            "PCK certificate chain is not a sequence of PEM certificate blocks",
            offset=offset,
            field="pck_cert_chain",
        )
    count = body.count(b"-----BEGIN CERTIFICATE-----")
    if count > MAX_PCK_CHAIN_CERTS:
        raise TdxQuoteParseError(
            f"PCK certificate chain holds {count} certificates; the limit is {MAX_PCK_CHAIN_CERTS}",
            offset=offset,
            field="pck_cert_chain",
        )


def _parse_signature_data(r: _Reader) -> QuoteSignatureData:
    start = r.pos
    signature = r.take(ECDSA_SIGNATURE_SIZE, "signature")
    attestation_key = r.take(ATTESTATION_KEY_SIZE, "attestation_key")
    cert_type_at = r.pos
    cert_type = r.u16("certification_data.type")
    if cert_type != CERT_DATA_QE_REPORT:
        raise TdxQuoteParseError(
            f"certification data type {cert_type} is not 6 (QE report certification data)",
            offset=cert_type_at,
            field="certification_data.type",
        )
    size_at = r.pos
    cert_size = r.u32("certification_data.size")
    if cert_size != r.end - r.pos:
        raise TdxQuoteParseError(
            f"certification data size {cert_size} does not match the {r.end - r.pos} bytes left"
            " in the signature data",
            offset=size_at,
            field="certification_data.size",
        )
    qe_at = r.pos
    qe_report = parse_qe_report(r.take(QE_REPORT_SIZE, "qe_report"), base_offset=qe_at)
    qe_report_signature = r.take(ECDSA_SIGNATURE_SIZE, "qe_report_signature")
    auth_at = r.pos
    auth_len = r.u16("qe_auth_data.size")
    if auth_len > MAX_QE_AUTH_DATA_BYTES:
        raise TdxQuoteParseError(
            f"QE auth data is {auth_len} bytes; the limit is {MAX_QE_AUTH_DATA_BYTES}",
            offset=auth_at,
            field="qe_auth_data.size",
        )
    qe_auth_data = r.take(auth_len, "qe_auth_data")
    inner_at = r.pos
    inner_type = r.u16("pck_cert_chain.type")
    if inner_type != CERT_DATA_PCK_CHAIN:
        raise TdxQuoteParseError(
            f"nested certification data type {inner_type} is not 5 (PCK certificate chain)",
            offset=inner_at,
            field="pck_cert_chain.type",
        )
    inner_size_at = r.pos
    inner_size = r.u32("pck_cert_chain.size")
    if inner_size > MAX_PCK_CHAIN_BYTES:
        raise TdxQuoteParseError(
            f"PCK certificate chain is {inner_size} bytes; the limit is {MAX_PCK_CHAIN_BYTES}",
            offset=inner_size_at,
            field="pck_cert_chain.size",
        )
    if inner_size != r.end - r.pos:
        raise TdxQuoteParseError(
            f"PCK certificate chain size {inner_size} does not match the {r.end - r.pos} bytes"
            " left in the certification data",
            offset=inner_size_at,
            field="pck_cert_chain.size",
        )
    pem_at = r.pos
    pck_chain_pem = r.take(inner_size, "pck_cert_chain")
    _check_pem_chain(pck_chain_pem, pem_at)
    return QuoteSignatureData(
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_chain_pem=pck_chain_pem,
        raw=r.data[start : r.pos],
    )


def parse_quote(data: bytes, *, allow_trailing_zero_padding: bool = False) -> TdxQuote:
    """Parse a TDX quote v4 or v5; raise ``TdxQuoteParseError`` on any deviation.

    ``allow_trailing_zero_padding`` declares ``data`` to be a fixed-size capture buffer (as
    some guest tools write, e.g. 8000 bytes): zero bytes may then follow the quote, and only
    zero bytes. Without it, anything after the quote is refused.
    """
    data = bytes(data)
    if len(data) > MAX_QUOTE_BUFFER_BYTES:
        raise TdxQuoteParseError(
            f"quote buffer is {len(data)} bytes; the limit is {MAX_QUOTE_BUFFER_BYTES}",
            field="quote",
        )
    r = _Reader(data)
    header = _parse_header(r)
    if header.version == QUOTE_VERSION_4:
        body_type = BODY_TYPE_TD_REPORT10
        body_size = TD_REPORT10_SIZE
    else:
        body_type = r.u16("body.type")
        body_size_at = r.pos
        body_size = r.u32("body.size")
        expected = {
            BODY_TYPE_TD_REPORT10: TD_REPORT10_SIZE,
            BODY_TYPE_TD_REPORT15: TD_REPORT15_SIZE,
        }
        if body_type not in expected:
            raise TdxQuoteParseError(
                f"body type {body_type} is not a TD report (2 = TDX 1.0, 3 = TDX 1.5)",
                offset=HEADER_SIZE,
                field="body.type",
            )
        if body_size != expected[body_type]:
            raise TdxQuoteParseError(
                f"body size {body_size} does not match body type {body_type}"
                f" ({expected[body_type]} bytes)",
                offset=body_size_at,
                field="body.size",
            )
    body = _parse_td_report(r, body_size)
    signed_end = r.pos
    sig_len_at = r.pos
    sig_len = r.u32("signature_data.size")
    if sig_len < MIN_SIGNATURE_DATA_SIZE:
        raise TdxQuoteParseError(
            f"signature data size {sig_len} is below the minimum {MIN_SIGNATURE_DATA_SIZE}",
            offset=sig_len_at,
            field="signature_data.size",
        )
    if sig_len > len(data) - r.pos:
        raise TdxQuoteParseError(
            f"signature data size {sig_len} runs past the end of the input",
            offset=sig_len_at,
            field="signature_data.size",
        )
    sig_reader = _Reader(data, r.pos, r.pos + sig_len)
    signature_data = _parse_signature_data(sig_reader)
    end = r.pos + sig_len
    trailing = data[end:]
    padding_length = 0
    if trailing:
        if not allow_trailing_zero_padding:
            raise TdxQuoteParseError(
                f"{len(trailing)} bytes follow the quote (declare a capture buffer to allow"
                " zero padding)",
                offset=end,
                field="trailing data",
            )
        if any(trailing):
            raise TdxQuoteParseError(
                "non-zero bytes follow the quote in the capture buffer",
                offset=end + next(i for i, b in enumerate(trailing) if b),
                field="trailing data",
            )
        padding_length = len(trailing)
    return TdxQuote(
        header=header,
        body_type=body_type,
        body=body,
        signature_data=signature_data,
        raw=data[:end],
        signed_region=data[:signed_end],
        padding_length=padding_length,
    )
