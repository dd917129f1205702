"""Verify Intel TDX quotes: signatures, PCK chain, collateral, revocation, TCB status.

Checks, in the order ``verify_quote`` runs them (each failure raises with a stable reason):

1. QE vendor id is Intel's (``qe_vendor``).
2. PCK chain (PCK -> Platform/Processor CA -> Intel SGX Root CA) leads to the *pinned* root
   at ``at`` (``ChainError`` reasons from ``attest.x509chain``; names: ``pck_chain``).
3. QE report signature by the PCK leaf key (``qe_report_signature``).
4. QE report data = SHA-256(attestation key || QE auth data) || 32 zero bytes
   (``qe_report_data``): this binds the attestation key to the PCK-certified QE.
5. Quote signature (ECDSA P-256, raw r || s) by the attestation key over header || body
   (``attestation_key``, ``quote_signature``).
6. PCK SGX extensions (OID 1.2.840.113741.1.13.1) parsed with a strict DER reader
   (``pck_extension``).
7. Collateral: Root CA CRL signed by the pinned root; PCK CRL and its issuer chain; TCB Info
   and QE Identity signatures over their exact bytes by the TCB signing certificate, whose
   chain leads to the pinned root; every certificate and CRL valid at ``at``; TCB Info and QE
   Identity not past ``nextUpdate`` (``collateral_expired``) nor before ``issueDate``.
8. Revocation: the PCK leaf against the PCK CRL of its own issuer, the PCK CA and the TCB
   signing certificate against the Root CA CRL (``RevocationError``).
9. FMSPC and PCEID of the PCK equal those of the TCB Info (``fmspc_mismatch``,
   ``pceid_mismatch``); TDX module MRSIGNERSEAM / SEAM attributes match the TCB Info's
   module identity (``tdx_module_mismatch``); the QE report matches the QE Identity
   (``qe_identity_mismatch``).
10. TCB status, as Intel's QVL computes it (see ``evaluate_tcb``). The status is a *fact*
    handed to appraisal, not an exception: ``OutOfDate`` or ``NoMatchingTcbLevel`` quotes still
    come back, typed, so a policy can decide and an auditor can see why.

Nothing here reads a clock: ``at`` is an argument.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import cache
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from attest.errors import ChainError, InputError, RevocationError, VerificationError
from attest.tdx.collateral import (
    Crl,
    IdentityTcbLevel,
    QeIdentity,
    TcbInfo,
    TcbLevel,
    TdxCollateral,
    TdxModule,
    touch_certificate,
)
from attest.tdx.quote import INTEL_QE_VENDOR_ID, TdReport, TdxQuote
from attest.timeutil import require_aware
from attest.x509chain import ChainCache, VerifiedChain, describe, load_pem_chain, verify_chain

#: SHA-256 of the DER of Intel's "Intel SGX Root CA" (the same value is pinned by
#: Phala-Network/dcap-qvl and google/go-tdx-guest, see attest/roots/intel_PROVENANCE.md).
INTEL_SGX_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
ROOT_PEM_NAME = "intel_sgx_root_ca.pem"

PCK_CHAIN_LENGTH = 3
ISSUER_CHAIN_LENGTH = 2
PCK_LEAF_CN = "Intel SGX PCK Certificate"
PCK_CA_CNS = frozenset({"Intel SGX PCK Platform CA", "Intel SGX PCK Processor CA"})
TCB_SIGNING_CN = "Intel SGX TCB Signing"

#: The SGX extension of a PCK certificate is about 550 bytes; anything over this is refused
#: before the DER walk.
MAX_SGX_EXTENSION_BYTES = 4096


class TcbStatus(StrEnum):
    """Intel's TCB statuses, plus the outcome for a TCB below every level Intel lists."""

    UP_TO_DATE = "UpToDate"
    SW_HARDENING_NEEDED = "SWHardeningNeeded"
    CONFIGURATION_NEEDED = "ConfigurationNeeded"
    CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
    OUT_OF_DATE = "OutOfDate"
    OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
    REVOKED = "Revoked"
    #: Intel's QVL calls this STATUS_TCB_NOT_SUPPORTED: no level of the TCB Info (or of the QE
    #: or TDX module identity) is at or below the platform's TCB.
    NO_MATCHING_TCB_LEVEL = "NoMatchingTcbLevel"


@cache
def intel_sgx_root() -> x509.Certificate:
    """The pinned Intel SGX Root CA (package data), checked against its fingerprint on load."""
    pem = resources.files("attest.roots").joinpath(ROOT_PEM_NAME).read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    if cert.fingerprint(hashes.SHA256()).hex() != INTEL_SGX_ROOT_CA_SHA256:
        raise ChainError("packaged Intel SGX Root CA does not match its pinned fingerprint")
    return cert


# --- PCK certificate SGX extensions ------------------------------------------------------

_SGX_OID = bytes.fromhex("2a864886f84d010d01")  # 1.2.840.113741.1.13.1
SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
_TAG_BOOLEAN, _TAG_INTEGER, _TAG_OCTETS, _TAG_OID, _TAG_ENUM, _TAG_SEQ = 1, 2, 4, 6, 10, 0x30


class _Der:
    """A strict DER walker: single-byte tags, minimal definite lengths, no trailing data."""

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = start
        self.end = len(data) if end is None else end

    def _fail(self, msg: str) -> VerificationError:
        return VerificationError(
            f"PCK SGX extension: {msg} at byte {self.pos}", reason="pck_extension"
        )

    def read(self, tag: int) -> tuple[int, int]:
        """Read one TLV with ``tag``; return the value's [start, end)."""
        if self.pos + 2 > self.end:
            raise self._fail("truncated")
        if self.data[self.pos] != tag:
            raise self._fail(f"tag {self.data[self.pos]:#x}, expected {tag:#x}")
        first = self.data[self.pos + 1]
        p = self.pos + 2
        if first < 0x80:
            length = first
        elif first == 0x81:
            if p + 1 > self.end or self.data[p] < 0x80:
                raise self._fail("non-minimal length")
            length = self.data[p]
            p += 1
        elif first == 0x82:
            if (
                p + 2 > self.end
                or self.data[p] == 0
                or int.from_bytes(self.data[p : p + 2]) < 0x100
            ):
                raise self._fail("non-minimal length")
            length = int.from_bytes(self.data[p : p + 2])
            p += 2
        else:
            raise self._fail("unsupported length form")
        if p + length > self.end:
            raise self._fail("length runs past its container")
        self.pos = p + length
        return p, p + length

    def sub(self, tag: int = _TAG_SEQ) -> _Der:
        start, end = self.read(tag)
        return _Der(self.data, start, end)

    def bytes_(self, tag: int) -> bytes:
        start, end = self.read(tag)
        return self.data[start:end]

    def uint(self, tag: int = _TAG_INTEGER, limit: int = 0xFFFF) -> int:
        value = self.bytes_(tag)
        if not value or (len(value) > 1 and value[0] == 0 and value[1] < 0x80) or value[0] >= 0x80:
            raise self._fail("INTEGER not minimal or negative")
        n = int.from_bytes(value)
        if n > limit:
            raise self._fail(f"INTEGER {n} above {limit}")
        return n

    def oid(self, expected: bytes, name: str) -> None:
        if self.bytes_(_TAG_OID) != expected:
            raise self._fail(f"expected OID of {name}")

    def done(self) -> None:
        if self.pos != self.end:
            raise self._fail("trailing data")

    def at_end(self) -> bool:
        return self.pos >= self.end


@dataclass(frozen=True)
class PckExtensions:
    """The SGX extension of a PCK certificate: which platform, at which TCB."""

    ppid: bytes
    tcb_components: tuple[int, ...]
    pce_svn: int
    cpu_svn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int
    platform_instance_id: bytes | None
    dynamic_platform: bool | None
    cached_keys: bool | None
    smt_enabled: bool | None
    raw: bytes


def parse_pck_extensions(cert: x509.Certificate) -> PckExtensions:
    """Parse the SGX extension of a PCK certificate with a strict DER reader."""
    try:
        ext = cert.extensions.get_extension_for_oid(SGX_EXTENSION_OID).value
    except x509.ExtensionNotFound:
        raise VerificationError(
            "PCK certificate has no SGX extension", reason="pck_extension"
        ) from None
    if not isinstance(ext, x509.UnrecognizedExtension):
        raise VerificationError("PCK SGX extension has an unexpected type", reason="pck_extension")
    data = ext.value
    if len(data) > MAX_SGX_EXTENSION_BYTES:
        raise VerificationError("PCK SGX extension is too large", reason="pck_extension")
    outer = _Der(data)
    top = outer.sub()
    outer.done()

    def entry(arc: int, name: str) -> _Der:
        seq = top.sub()
        seq.oid(_SGX_OID + bytes([arc]), name)
        return seq

    e = entry(1, "PPID")
    ppid = e.bytes_(_TAG_OCTETS)
    e.done()
    e = entry(2, "TCB")
    tcb = e.sub()
    e.done()
    comps: list[int] = []
    for i in range(1, 17):
        c = tcb.sub()
        c.oid(_SGX_OID + bytes([2, i]), f"TCB component {i}")
        comps.append(c.uint(limit=0xFF))
        c.done()
    c = tcb.sub()
    c.oid(_SGX_OID + bytes([2, 17]), "PCESVN")
    pce_svn = c.uint(limit=0xFFFF)
    c.done()
    c = tcb.sub()
    c.oid(_SGX_OID + bytes([2, 18]), "CPUSVN")
    cpu_svn = c.bytes_(_TAG_OCTETS)
    c.done()
    tcb.done()
    e = entry(3, "PCE-ID")
    pce_id = e.bytes_(_TAG_OCTETS)
    e.done()
    e = entry(4, "FMSPC")
    fmspc = e.bytes_(_TAG_OCTETS)
    e.done()
    e = entry(5, "SGX type")
    sgx_type = e.uint(_TAG_ENUM, limit=2)
    e.done()
    platform_instance_id: bytes | None = None
    flags: dict[int, bool] = {}
    if not top.at_end():
        e = entry(6, "platform instance id")
        platform_instance_id = e.bytes_(_TAG_OCTETS)
        e.done()
        if len(platform_instance_id) != 16:
            raise VerificationError(
                "PCK platform instance id is not 16 bytes", reason="pck_extension"
            )
        if not top.at_end():
            e = entry(7, "configuration")
            conf = e.sub()
            e.done()
            last = 0
            while not conf.at_end():
                item = conf.sub()
                start, end = item.read(_TAG_OID)
                arc_bytes = item.data[start:end]
                if arc_bytes[:-1] != _SGX_OID + b"\x07" or not last < arc_bytes[-1] <= 3:
                    raise VerificationError(
                        "PCK configuration entry out of order or unknown", reason="pck_extension"
                    )
                last = arc_bytes[-1]
                value = item.bytes_(_TAG_BOOLEAN)
                if value not in (b"\x00", b"\xff"):
                    raise VerificationError(
                        "PCK configuration BOOLEAN is not DER", reason="pck_extension"
                    )
                flags[last] = value == b"\xff"
                item.done()
    top.done()
    for name, value, size in (
        ("PPID", ppid, 16),
        ("CPUSVN", cpu_svn, 16),
        ("PCE-ID", pce_id, 2),
        ("FMSPC", fmspc, 6),
    ):
        if len(value) != size:
            raise VerificationError(
                f"PCK {name} is {len(value)} bytes, expected {size}", reason="pck_extension"
            )
    return PckExtensions(
        ppid=ppid,
        tcb_components=tuple(comps),
        pce_svn=pce_svn,
        cpu_svn=cpu_svn,
        pce_id=pce_id,
        fmspc=fmspc,
        sgx_type=sgx_type,
        platform_instance_id=platform_instance_id,
        dynamic_platform=flags.get(1),
        cached_keys=flags.get(2),
        smt_enabled=flags.get(3),
        raw=data,
    )


# --- signatures --------------------------------------------------------------------------


def _raw_sig_ok(key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> bool:
    """ECDSA P-256/SHA-256 with the signature as 64 raw bytes (r || s, big-endian)."""
    if len(signature) != 64:
        return False
    der = encode_dss_signature(int.from_bytes(signature[:32]), int.from_bytes(signature[32:]))
    try:
        key.verify(der, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _p256_key(cert: x509.Certificate, what: str, reason: str) -> ec.EllipticCurvePublicKey:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise VerificationError(f"{what}: unreadable public key", reason=reason) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise VerificationError(f"{what}: key is not ECDSA P-256", reason=reason)
    return key


def _cn(cert: x509.Certificate) -> str:
    return describe(cert)


@dataclass(frozen=True)
class SignedTdxQuote:
    """A quote whose signatures and PCK chain verified; no collateral applied yet."""

    quote: TdxQuote
    pck_chain: VerifiedChain
    pck: PckExtensions


def _malformed_pck(message: str) -> ChainError:
    return ChainError(message, reason="malformed_certificate")


def _verify_chain(
    certs: Sequence[x509.Certificate],
    *,
    root: x509.Certificate,
    at: datetime,
    length: int,
    what: str,
    chain_cache: ChainCache | None,
) -> VerifiedChain:
    if chain_cache is not None:
        return chain_cache.verify(certs, root=root, at=at, expected_length=length, what=what)
    return verify_chain(certs, root=root, at=at, expected_length=length, what=what)


def verify_quote_signatures(
    quote: TdxQuote,
    *,
    at: datetime,
    root: x509.Certificate | None = None,
    chain_cache: ChainCache | None = None,
) -> SignedTdxQuote:
    """Checks 1-6: QE vendor, PCK chain, QE report signature and binding, quote signature."""
    at = require_aware(at)
    root = intel_sgx_root() if root is None else root
    sd = quote.signature_data
    if quote.header.qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise VerificationError(
            f"QE vendor id {quote.header.qe_vendor_id.hex()} is not Intel's", reason="qe_vendor"
        )
    pem = sd.pck_chain_pem[:-1] if sd.pck_chain_pem.endswith(b"\x00") else sd.pck_chain_pem
    try:
        certs = load_pem_chain(pem)
    except InputError as exc:
        raise ChainError(f"PCK chain: {exc}", reason="malformed_certificate") from exc
    for cert in certs:
        touch_certificate(cert, "PCK chain", _malformed_pck)
    chain = _verify_chain(
        certs, root=root, at=at, length=PCK_CHAIN_LENGTH, what="PCK chain", chain_cache=chain_cache
    )
    leaf = chain.leaf
    if _cn(leaf) != PCK_LEAF_CN or _cn(certs[1]) not in PCK_CA_CNS:
        raise ChainError(
            f"PCK chain: '{_cn(leaf)}' issued by '{_cn(certs[1])}' is not a PCK certificate",
            reason="pck_chain",
        )
    pck_key = _p256_key(leaf, "PCK certificate", "pck_chain")
    if not _raw_sig_ok(pck_key, sd.qe_report_signature, sd.qe_report.raw):
        raise VerificationError(
            "QE report signature does not verify with the PCK key", reason="qe_report_signature"
        )
    expected = hashlib.sha256(sd.attestation_key + sd.qe_auth_data).digest() + bytes(32)
    if sd.qe_report.report_data != expected:
        raise VerificationError(
            "QE report data is not SHA-256(attestation key || QE auth data) || zeros",
            reason="qe_report_data",
        )
    try:
        att_key = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), b"\x04" + sd.attestation_key
        )
    except ValueError as exc:
        raise VerificationError(
            "attestation key is not a P-256 point", reason="attestation_key"
        ) from exc
    if not _raw_sig_ok(att_key, sd.signature, quote.signed_region):
        raise VerificationError(
            "quote signature does not verify with the attestation key", reason="quote_signature"
        )
    return SignedTdxQuote(quote=quote, pck_chain=chain, pck=parse_pck_extensions(leaf))


# --- collateral --------------------------------------------------------------------------


def verify_crl(crl: Crl, issuer: x509.Certificate, at: datetime, what: str = "CRL") -> None:
    """A CRL must name ``issuer``, carry its valid signature, and be current at ``at``."""
    at = require_aware(at)
    c = crl.crl
    if c.issuer != issuer.subject:
        raise RevocationError(
            f"{what}: issued by '{c.issuer.rfc4514_string()}', expected '{describe(issuer)}'",
            reason="crl_issuer",
        )
    try:
        ok = c.is_signature_valid(_p256_key(issuer, what, "crl_signature"))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        ok = False
    if not ok:
        raise RevocationError(f"{what}: signature does not verify", reason="crl_signature")
    nxt = c.next_update_utc
    if nxt is None:
        raise RevocationError(f"{what}: has no nextUpdate", reason="crl_expired")
    if at < c.last_update_utc:
        raise RevocationError(
            f"{what}: not valid before {c.last_update_utc.isoformat()}", reason="crl_not_yet_valid"
        )
    if at > nxt:
        raise RevocationError(f"{what}: expired at {nxt.isoformat()}", reason="crl_expired")


def _check_not_revoked(cert: x509.Certificate, crl: Crl, what: str) -> None:
    if crl.crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
        raise RevocationError(f"{what}: '{describe(cert)}' is revoked", reason="revoked")


def _check_fresh(issue: datetime, next_update: datetime, at: datetime, what: str) -> None:
    if at > next_update:
        raise VerificationError(
            f"{what} expired at {next_update.isoformat()} (verification time {at.isoformat()})",
            reason="collateral_expired",
        )
    if at < issue:
        raise VerificationError(
            f"{what} issued at {issue.isoformat()}, after the verification time {at.isoformat()}",
            reason="collateral_not_yet_valid",
        )


@dataclass(frozen=True)
class VerifiedCollateral:
    """Collateral whose signatures, chains, CRLs and freshness held at ``verified_at``."""

    collateral: TdxCollateral
    tcb_info: TcbInfo
    qe_identity: QeIdentity
    #: The earliest nextUpdate / notAfter of everything used: re-verify before this time.
    expiry: datetime
    verified_at: datetime


def verify_signed_json(
    signed_bytes: bytes, signature: bytes, signer: x509.Certificate, *, what: str, reason: str
) -> None:
    """Check a TCB Info / QE Identity signature over its exact served bytes."""
    key = _p256_key(signer, what, reason)
    if not _raw_sig_ok(key, signature, signed_bytes):
        raise VerificationError(f"{what}: signature does not verify", reason=reason)


def verify_signed_collateral(
    *,
    what: str,
    issuer_chain: Sequence[x509.Certificate],
    signed_bytes: bytes,
    signature: bytes,
    reason: str,
    issue_date: datetime,
    next_update: datetime,
    at: datetime,
    root: x509.Certificate | None = None,
    chain_cache: ChainCache | None = None,
) -> VerifiedChain:
    """One signed collateral item: issuer chain to the root, signer CN, signature, freshness.

    Revocation of the signer is the caller's (it needs the Root CA CRL); ``verify_collateral``
    does it for the full set.
    """
    at = require_aware(at)
    root = intel_sgx_root() if root is None else root
    chain = _verify_chain(
        issuer_chain,
        root=root,
        at=at,
        length=ISSUER_CHAIN_LENGTH,
        what=f"{what} issuer chain",
        chain_cache=chain_cache,
    )
    if _cn(chain.leaf) != TCB_SIGNING_CN:
        raise ChainError(
            f"{what} issuer chain: '{_cn(chain.leaf)}' is not '{TCB_SIGNING_CN}'",
            reason="tcb_signing_cert",
        )
    verify_signed_json(signed_bytes, signature, chain.leaf, what=what, reason=reason)
    _check_fresh(issue_date, next_update, at, what)
    return chain


def verify_tcb_info(
    tcb_info: TcbInfo,
    issuer_chain: Sequence[x509.Certificate],
    *,
    at: datetime,
    root: x509.Certificate | None = None,
) -> VerifiedChain:
    """A TCB Info on its own (e.g. fetched from PCS with its issuer chain header)."""
    return verify_signed_collateral(
        what="TCB Info",
        issuer_chain=issuer_chain,
        signed_bytes=tcb_info.signed_bytes,
        signature=tcb_info.signature,
        reason="tcb_info_signature",
        issue_date=tcb_info.issue_date,
        next_update=tcb_info.next_update,
        at=at,
        root=root,
    )


def verify_qe_identity(
    qe_identity: QeIdentity,
    issuer_chain: Sequence[x509.Certificate],
    *,
    at: datetime,
    root: x509.Certificate | None = None,
) -> VerifiedChain:
    """A QE Identity on its own."""
    return verify_signed_collateral(
        what="QE Identity",
        issuer_chain=issuer_chain,
        signed_bytes=qe_identity.signed_bytes,
        signature=qe_identity.signature,
        reason="qe_identity_signature",
        issue_date=qe_identity.issue_date,
        next_update=qe_identity.next_update,
        at=at,
        root=root,
    )


def verify_collateral(
    collateral: TdxCollateral,
    *,
    at: datetime,
    root: x509.Certificate | None = None,
    chain_cache: ChainCache | None = None,
) -> VerifiedCollateral:
    """Check 7: TCB Info and QE Identity (chain, signature, freshness), then the CRLs."""
    at = require_aware(at)
    root = intel_sgx_root() if root is None else root
    # Signed documents first, so a stale set reports "collateral_expired" before its CRLs.
    expiries: list[datetime] = []
    signers: list[tuple[str, x509.Certificate]] = []
    signed = (
        ("TCB Info", collateral.tcb_info_issuer_chain, collateral.tcb_info.signed_bytes,
         collateral.tcb_info.signature, "tcb_info_signature", collateral.tcb_info.issue_date,
         collateral.tcb_info.next_update),
        ("QE Identity", collateral.qe_identity_issuer_chain, collateral.qe_identity.signed_bytes,
         collateral.qe_identity.signature, "qe_identity_signature",
         collateral.qe_identity.issue_date, collateral.qe_identity.next_update),
    )  # fmt: skip
    for what, certs, body, signature, reason, issue, next_update in signed:
        chain = verify_signed_collateral(
            what=what,
            issuer_chain=certs,
            signed_bytes=body,
            signature=signature,
            reason=reason,
            issue_date=issue,
            next_update=next_update,
            at=at,
            root=root,
            chain_cache=chain_cache,
        )
        signers.append((what, chain.leaf))
        expiries += [next_update, chain.valid_until]
    verify_crl(collateral.root_ca_crl, root, at, "Root CA CRL")
    expiries.append(collateral.root_ca_crl.crl.next_update_utc or at)

    pck_crl_chain = _verify_chain(
        collateral.pck_crl_issuer_chain,
        root=root,
        at=at,
        length=ISSUER_CHAIN_LENGTH,
        what="PCK CRL issuer chain",
        chain_cache=chain_cache,
    )
    _check_not_revoked(pck_crl_chain.leaf, collateral.root_ca_crl, "PCK CRL issuer")
    verify_crl(collateral.pck_crl, pck_crl_chain.leaf, at, "PCK CRL")
    expiries += [collateral.pck_crl.crl.next_update_utc or at, pck_crl_chain.valid_until]

    for what, signer in signers:
        _check_not_revoked(signer, collateral.root_ca_crl, f"{what} signer")
    return VerifiedCollateral(
        collateral=collateral,
        tcb_info=collateral.tcb_info,
        qe_identity=collateral.qe_identity,
        expiry=min(expiries),
        verified_at=at,
    )


# --- TCB evaluation (Intel QVL algorithm) ------------------------------------------------


@dataclass(frozen=True)
class TcbEvaluation:
    """How the status was reached: the matched levels and each part's own status."""

    status: TcbStatus
    advisory_ids: tuple[str, ...]
    sgx_level: TcbLevel | None
    tdx_level: TcbLevel | None
    tdx_module_status: TcbStatus | None
    tdx_module_level: IdentityTcbLevel | None
    qe_status: TcbStatus
    qe_level: IdentityTcbLevel | None


_CONFIG_NEEDED = frozenset(
    {TcbStatus.CONFIGURATION_NEEDED, TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED}
)
_SOFT = frozenset({TcbStatus.UP_TO_DATE, TcbStatus.SW_HARDENING_NEEDED})


def _converge(level_status: TcbStatus, other: TcbStatus | None) -> TcbStatus:
    """Intel's convergence of a TCB level status with a QE or TDX module status."""
    if other == TcbStatus.OUT_OF_DATE:
        if level_status in _SOFT:
            return TcbStatus.OUT_OF_DATE
        if level_status in _CONFIG_NEEDED:
            return TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED
    if other == TcbStatus.REVOKED:
        return TcbStatus.REVOKED
    if other == TcbStatus.NO_MATCHING_TCB_LEVEL:
        return TcbStatus.NO_MATCHING_TCB_LEVEL
    return level_status


def _masked_equal(value: bytes, mask: bytes, expected: bytes) -> bool:
    return len(value) == len(mask) == len(expected) and all(
        (v & m) == e for v, m, e in zip(value, mask, expected, strict=True)
    )


def _check_module(body: TdReport, module: TdxModule, what: str) -> None:
    if body.mr_signer_seam != module.mrsigner:
        raise VerificationError(
            f"{what}: MRSIGNERSEAM {body.mr_signer_seam.hex()} is not {module.mrsigner.hex()}",
            reason="tdx_module_mismatch",
        )
    if not _masked_equal(body.seam_attributes, module.attributes_mask, module.attributes):
        raise VerificationError(
            f"{what}: SEAM attributes {body.seam_attributes.hex()} do not match"
            f" {module.attributes.hex()} under mask {module.attributes_mask.hex()}",
            reason="tdx_module_mismatch",
        )


def _identity_level(levels: Sequence[IdentityTcbLevel], svn: int) -> IdentityTcbLevel | None:
    return next((lv for lv in levels if svn >= lv.isv_svn), None)


def _dedupe(ids: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(ids))


def evaluate_tcb(
    quote: TdxQuote, pck: PckExtensions, tcb_info: TcbInfo, qe_identity: QeIdentity
) -> TcbEvaluation:
    """Checks 9-10, pure: match the platform against *verified* TCB Info and QE Identity.

    As Intel's QVL: the TDX module identity ``TDX_<TEE_TCB_SVN[1]>`` (or ``tdxModule`` for
    version 0) must match MRSIGNERSEAM and SEAM attributes, and its first level with ISVSVN
    <= TEE_TCB_SVN[0] gives the module status. The platform's level is the first one in
    ``tcbLevels`` (Intel orders them newest first) whose 16 SGX components and PCESVN are all
    <= the PCK's, and whose TDX components are all <= TEE_TCB_SVN (skipping bytes 0-1 when
    TEE_TCB_SVN[1] != 0, which the module identity covers). The QE's first level with ISVSVN
    <= its ISVSVN gives the QE status. Statuses converge as Intel defines (module or QE
    ``OutOfDate`` turns UpToDate/SWHardeningNeeded into OutOfDate and the Configuration ones
    into OutOfDateConfigurationNeeded; ``Revoked`` wins). Not implemented: the TDX 1.5
    TD-relaunch advice (Intel's ``TDRelaunchAdvised`` statuses).
    """
    body = quote.body
    qe = quote.signature_data.qe_report
    if pck.fmspc != tcb_info.fmspc:
        raise VerificationError(
            f"FMSPC of the PCK {pck.fmspc.hex()} is not the TCB Info's {tcb_info.fmspc.hex()}",
            reason="fmspc_mismatch",
        )
    if pck.pce_id != tcb_info.pce_id:
        raise VerificationError(
            f"PCEID of the PCK {pck.pce_id.hex()} is not the TCB Info's {tcb_info.pce_id.hex()}",
            reason="pceid_mismatch",
        )

    # TDX module identity.
    module_status: TcbStatus | None = None
    module_level: IdentityTcbLevel | None = None
    version = body.tdx_module_version
    if version == 0:
        if tcb_info.tdx_module is None:
            raise VerificationError("TCB Info has no tdxModule", reason="tdx_module_mismatch")
        _check_module(body, tcb_info.tdx_module, "tdxModule")
    else:
        wanted = f"TDX_{version:02X}"
        ident = next((i for i in tcb_info.tdx_module_identities if i.id.upper() == wanted), None)
        if ident is None:
            raise VerificationError(
                f"TCB Info has no TDX module identity {wanted}", reason="tdx_module_mismatch"
            )
        _check_module(body, ident.module, wanted)
        module_level = _identity_level(ident.tcb_levels, body.tdx_module_isv_svn)
        module_status = (
            TcbStatus(module_level.status)
            if module_level is not None
            else TcbStatus.NO_MATCHING_TCB_LEVEL
        )

    # QE identity.
    if qe.mr_signer != qe_identity.mrsigner:
        raise VerificationError(
            f"QE MRSIGNER {qe.mr_signer.hex()} is not {qe_identity.mrsigner.hex()}",
            reason="qe_identity_mismatch",
        )
    if qe.isv_prod_id != qe_identity.isv_prod_id:
        raise VerificationError(
            f"QE ISVPRODID {qe.isv_prod_id} is not {qe_identity.isv_prod_id}",
            reason="qe_identity_mismatch",
        )
    if (qe.misc_select & qe_identity.miscselect_mask) != qe_identity.miscselect:
        raise VerificationError(
            f"QE MISCSELECT {qe.misc_select:#010x} does not match {qe_identity.miscselect:#010x}"
            f" under mask {qe_identity.miscselect_mask:#010x}",
            reason="qe_identity_mismatch",
        )
    if not _masked_equal(qe.attributes, qe_identity.attributes_mask, qe_identity.attributes):
        raise VerificationError(
            f"QE attributes {qe.attributes.hex()} do not match {qe_identity.attributes.hex()}"
            f" under mask {qe_identity.attributes_mask.hex()}",
            reason="qe_identity_mismatch",
        )
    qe_level = _identity_level(qe_identity.tcb_levels, qe.isv_svn)
    qe_status = (
        TcbStatus(qe_level.status) if qe_level is not None else TcbStatus.NO_MATCHING_TCB_LEVEL
    )

    # Platform TCB level.
    sgx_level: TcbLevel | None = None
    tdx_level: TcbLevel | None = None
    first_tdx = 2 if version > 0 else 0
    for level in tcb_info.tcb_levels:
        if pck.pce_svn < level.pce_svn or any(
            have < need for have, need in zip(pck.tcb_components, level.sgx_components, strict=True)
        ):
            continue
        if sgx_level is None:
            sgx_level = level
        if all(body.tee_tcb_svn[i] >= level.tdx_components[i] for i in range(first_tdx, 16)):
            tdx_level = level
            break

    advisories: list[str] = []
    if tdx_level is None:
        status = TcbStatus.NO_MATCHING_TCB_LEVEL
    else:
        advisories += tdx_level.advisory_ids
        status = _converge(TcbStatus(tdx_level.status), module_status)
        if module_level is not None:
            advisories += module_level.advisory_ids
        status = _converge(status, qe_status)
        if qe_level is not None:
            advisories += qe_level.advisory_ids
    return TcbEvaluation(
        status=status,
        advisory_ids=_dedupe(advisories),
        sgx_level=sgx_level,
        tdx_level=tdx_level,
        tdx_module_status=module_status,
        tdx_module_level=module_level,
        qe_status=qe_status,
        qe_level=qe_level,
    )


# --- the whole verification --------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedTdxQuote:
    """A TDX quote whose every check passed as of ``verified_at``; facts for appraisal.

    ``tcb_status`` may still be anything Intel defines (or ``NoMatchingTcbLevel``): deciding
    which statuses are acceptable is policy. ``debug`` is the TD's DEBUG attribute: lessee's
    default policy refuses it.
    """

    quote: TdxQuote
    pck: PckExtensions
    pck_chain: VerifiedChain
    collateral: VerifiedCollateral
    evaluation: TcbEvaluation
    verified_at: datetime

    @property
    def tcb_status(self) -> TcbStatus:
        return self.evaluation.status

    @property
    def advisory_ids(self) -> tuple[str, ...]:
        return self.evaluation.advisory_ids

    @property
    def fmspc(self) -> bytes:
        return self.pck.fmspc

    @property
    def collateral_expiry(self) -> datetime:
        """Earliest expiry among collateral and every certificate used (PCK chain included)."""
        return min(self.collateral.expiry, self.pck_chain.valid_until)

    @property
    def tcb_evaluation_data_number(self) -> int:
        return self.collateral.tcb_info.tcb_evaluation_data_number

    @property
    def body(self) -> TdReport:
        return self.quote.body

    @property
    def debug(self) -> bool:
        return self.quote.body.debug

    @property
    def mr_td(self) -> bytes:
        return self.quote.body.mr_td

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return self.quote.body.rtmrs

    @property
    def mr_seam(self) -> bytes:
        return self.quote.body.mr_seam

    @property
    def report_data(self) -> bytes:
        return self.quote.body.report_data


def verify_quote(
    quote: TdxQuote,
    collateral: TdxCollateral,
    *,
    at: datetime,
    root: x509.Certificate | None = None,
    expected_report_data: bytes | None = None,
    chain_cache: ChainCache | None = None,
) -> VerifiedTdxQuote:
    """Run checks 1-10 as of ``at`` against the pinned Intel root (or ``root`` in tests)."""
    at = require_aware(at)
    root = intel_sgx_root() if root is None else root
    signed = verify_quote_signatures(quote, at=at, root=root, chain_cache=chain_cache)
    vc = verify_collateral(collateral, at=at, root=root, chain_cache=chain_cache)
    leaf, pck_ca = signed.pck_chain.certs[0], signed.pck_chain.certs[1]
    if collateral.pck_crl.crl.issuer != leaf.issuer:
        raise RevocationError(
            f"PCK CRL is issued by '{collateral.pck_crl.crl.issuer.rfc4514_string()}', the PCK by"
            f" '{leaf.issuer.rfc4514_string()}'",
            reason="crl_issuer",
        )
    _check_not_revoked(leaf, collateral.pck_crl, "PCK certificate")
    _check_not_revoked(pck_ca, collateral.root_ca_crl, "PCK CA")
    evaluation = evaluate_tcb(quote, signed.pck, vc.tcb_info, vc.qe_identity)
    if expected_report_data is not None and quote.body.report_data != expected_report_data:
        raise VerificationError(
            "REPORTDATA is not the expected session binding", reason="report_data_mismatch"
        )
    return VerifiedTdxQuote(
        quote=quote,
        pck=signed.pck,
        pck_chain=signed.pck_chain,
        collateral=vc,
        evaluation=evaluation,
        verified_at=at,
    )


def chain_der(chain: VerifiedChain) -> tuple[bytes, ...]:
    """DER of each certificate of a verified chain (for archiving with the evidence)."""
    return tuple(c.public_bytes(Encoding.DER) for c in chain.certs)
