"""Verify one device's report: certificate chain, signature, nonce and FWID binding.

Each check is its own function raising a ``VerificationError`` subclass with a stable reason,
so the pipeline (``attest.nvidia.verifier``) can run them one by one and report every result,
and ``verify_device`` runs them all, raising at the first failure.

* **Chain**: exactly 5 certificates (leaf/attestation key, BROM, provisioner ICA, identity CA,
  root), ending at the *pinned* NVIDIA Device Identity CA (``attest.roots``), valid at ``at``.
  The root the device sends is compared byte for byte with the pinned one, never trusted. Only
  the last certificate may be that root or self-signed, the three in between must be CAs, and
  the leaf must be an end entity allowed to sign (``check_end_entity``, the RIM signer's rule):
  a 4-deep chain padded with a second root copy would otherwise make the BROM (a CA) the
  attestation key. No certificate may carry a critical extension the chain check does not
  process (``attest.x509chain.UNDERSTOOD_CRITICAL_EXTENSIONS``).
* **Signature**: ECDSA P-384 / SHA-384, raw r‖s, over request ‖ response-without-signature, with
  the leaf key of that verified chain.
* **Nonce**: the requester nonce inside the signed request equals the caller's (constant time).
* **FWID**: the leaf certificate names the firmware that created the attestation key
  (extension 2.23.133.5.4.1 on Hopper and NVSwitch: the last 48 bytes; 2.23.133.5.4.1.1 on
  Blackwell: a TCG DICE TcbInfo whose ``fwids[0].digest`` is the FWID). When the report carries
  an FWID (opaque type 20) the two must be equal. Older firmware (the 2023 Hopper sample) and
  NVSwitch firmware put no FWID in the report: that is returned as ``FwidStatus.ABSENT_IN_REPORT``
  and shown in the results (claim ``x-lessee-fwid-binding``), never counted as a match.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attest.errors import ChainError, VerificationError
from attest.nvidia.evidence import Arch, DeviceEvidence, chain_arch
from attest.nvidia.opaque import FWID_LENGTH, DeviceReport, ReportCache, parse_device_report
from attest.nvidia.spdm import SIGNATURE_LENGTH
from attest.roots import nvidia_device_root
from attest.timeutil import require_aware
from attest.x509chain import ChainCache, VerifiedChain, check_end_entity, verify_chain

#: NVIDIA device chains are leaf, BROM, provisioner ICA, identity CA, root: never more or fewer.
DEVICE_CHAIN_LENGTH = 5
#: Hopper / NVSwitch FWID extension (TCG DICE TcbInfo arc); the FWID is its last 48 bytes.
OID_FWID_HOPPER = x509.ObjectIdentifier("2.23.133.5.4.1")
#: Blackwell FWID extension: a DICE TcbInfo; the FWID is fwids[0].digest.
OID_FWID_TCBINFO = x509.ObjectIdentifier("2.23.133.5.4.1.1")
#: DER of the SHA-384 OID (2.16.840.1.101.3.4.2.2), the only FWID hash NVIDIA uses.
_SHA384_OID_DER = bytes.fromhex("0609608648016503040202")
#: A TcbInfo larger than this is not one (the Blackwell one is 180 bytes).
MAX_TCBINFO_BYTES = 4096
#: Bytes of one P-384 coordinate (r and s of the raw signature).
_P384_COORD = 48


class DeviceCheckError(VerificationError):
    """A device check failed; ``reason`` names which (stable codes, see each subclass)."""


class ArchMismatchError(DeviceCheckError):
    """The declared architecture and the leaf certificate disagree, or neither is known."""


class SignatureError(DeviceCheckError):
    """The report signature does not verify with the leaf key (reason ``bad_signature``)."""


class NonceMismatchError(DeviceCheckError):
    """The report was made for another nonce (reason ``nonce_mismatch``): a replay."""


class FwidError(DeviceCheckError):
    """FWID binding failed: mismatch, or a malformed / missing certificate extension."""


class FwidStatus(StrEnum):
    MATCH = "match"
    ABSENT_IN_REPORT = "absent-in-report"


def resolve_arch(evidence: DeviceEvidence) -> Arch:
    """The device's architecture: declared and certified must agree; one of them must exist."""
    certified = chain_arch(evidence.chain)
    if certified is None:
        raise ArchMismatchError(
            "the leaf certificate names no known NVIDIA device architecture", reason="arch_unknown"
        )
    if evidence.arch is not None and evidence.arch is not certified:
        raise ArchMismatchError(
            f"evidence says arch {evidence.arch.value}, the leaf certificate is {certified.value}",
            reason="arch_mismatch",
        )
    return certified


def verify_device_chain(
    chain: tuple[x509.Certificate, ...] | list[x509.Certificate],
    *,
    at: datetime,
    cache: ChainCache | None = None,
    root: x509.Certificate | None = None,
) -> VerifiedChain:
    """The device chain to the pinned NVIDIA Device Identity CA, exactly 5 long, as of ``at``,
    its leaf an end entity allowed to sign (ChainError ``leaf_is_ca`` / ``leaf_key_usage``) with
    a P-384 key (``leaf_key_type``)."""
    pinned = root if root is not None else nvidia_device_root()
    if cache is not None:
        verified = cache.verify(
            chain,
            root=pinned,
            at=at,
            expected_length=DEVICE_CHAIN_LENGTH,
            what="device certificate chain",
        )
    else:
        verified = verify_chain(
            chain,
            root=pinned,
            at=at,
            expected_length=DEVICE_CHAIN_LENGTH,
            what="device certificate chain",
        )
    check_end_entity(verified.leaf, "device certificate chain")
    key = verified.leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise ChainError("device leaf key is not ECDSA P-384", reason="leaf_key_type")
    return verified


def verify_signature(report: DeviceReport, leaf: x509.Certificate) -> None:
    """ECDSA P-384 / SHA-384 over request ‖ response-minus-signature; raw r‖s signature."""
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise SignatureError("the leaf key is not ECDSA P-384", reason="bad_signature")
    sig = report.spdm.signature
    if len(sig) != SIGNATURE_LENGTH:  # guaranteed by the parser; kept as a guard
        raise SignatureError("signature is not 96 bytes", reason="bad_signature")
    r = int.from_bytes(sig[:_P384_COORD], "big")
    s = int.from_bytes(sig[_P384_COORD:], "big")
    try:
        key.verify(encode_dss_signature(r, s), report.spdm.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise SignatureError(
            "report signature does not verify with the leaf certificate's key",
            reason="bad_signature",
        ) from None


def check_nonce(report: DeviceReport, expected: bytes) -> None:
    """The signed requester nonce must equal ``expected`` (compared in constant time)."""
    if not hmac.compare_digest(report.nonce, expected):
        raise NonceMismatchError(
            f"report nonce {report.nonce.hex()} is not the expected nonce {expected.hex()}",
            reason="nonce_mismatch",
        )


# --- FWID -----------------------------------------------------------------------------------


def _der_tlv(data: bytes, off: int, what: str) -> tuple[int, int, int]:
    """One DER TLV at ``off`` -> (tag, content start, content end). Definite, minimal lengths."""
    if off + 2 > len(data):
        raise FwidError(f"{what}: truncated DER", reason="fwid_malformed")
    tag = data[off]
    if tag & 0x1F == 0x1F:
        raise FwidError(f"{what}: multi-byte DER tags are not used here", reason="fwid_malformed")
    first = data[off + 1]
    pos = off + 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 2 or pos + n > len(data):
            raise FwidError(f"{what}: bad DER length", reason="fwid_malformed")
        length = int.from_bytes(data[pos : pos + n], "big")
        if length < 0x80 or (n == 2 and length < 0x100):
            raise FwidError(f"{what}: non-minimal DER length", reason="fwid_malformed")
        pos += n
    if pos + length > len(data):
        raise FwidError(f"{what}: DER value runs past its container", reason="fwid_malformed")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int, what: str) -> list[tuple[int, int, int]]:
    out = []
    off = start
    while off < end:
        tag, s, e = _der_tlv(data[:end], off, what)
        out.append((tag, s, e))
        off = e
    return out


def _fwid_from_digest_seq(data: bytes, start: int, end: int, what: str) -> bytes:
    """FWID ::= SEQUENCE { hashAlg OID (must be SHA-384), digest OCTET STRING (48 bytes) }."""
    kids = _children(data, start, end, what)
    if len(kids) != 2 or kids[0][0] != 0x06 or kids[1][0] != 0x04:
        raise FwidError(f"{what}: FWID is not (OID, OCTET STRING)", reason="fwid_malformed")
    if data[kids[0][1] - 2 : kids[0][2]] != _SHA384_OID_DER:
        raise FwidError(f"{what}: FWID hash is not SHA-384", reason="fwid_malformed")
    digest = data[kids[1][1] : kids[1][2]]
    if len(digest) != FWID_LENGTH:
        raise FwidError(f"{what}: FWID digest is {len(digest)} bytes", reason="fwid_malformed")
    return digest


def _fwid_hopper(value: bytes) -> bytes:
    """NVIDIA's rule: the last 48 bytes. Checked to really be the last element's SHA-384 digest."""
    what = "leaf FWID extension 2.23.133.5.4.1"
    tag, s, e = _der_tlv(value, 0, what)
    if tag != 0x30 or e != len(value):
        raise FwidError(f"{what}: not one DER SEQUENCE", reason="fwid_malformed")
    kids = _children(value, s, e, what)
    if not kids or kids[-1][0] != 0x30:
        raise FwidError(f"{what}: last element is not an FWID", reason="fwid_malformed")
    digest = _fwid_from_digest_seq(value, kids[-1][1], kids[-1][2], what)
    if digest != value[-FWID_LENGTH:]:  # the two readings must agree
        raise FwidError(f"{what}: FWID is not the last 48 bytes", reason="fwid_malformed")
    return digest


def _fwid_tcbinfo(value: bytes) -> bytes:
    """TCG DICE TcbInfo: fwids [6] IMPLICIT SEQUENCE OF FWID; the FWID is fwids[0].digest."""
    what = "leaf DICE TcbInfo extension 2.23.133.5.4.1.1"
    if len(value) > MAX_TCBINFO_BYTES:
        raise FwidError(f"{what}: larger than {MAX_TCBINFO_BYTES} bytes", reason="fwid_malformed")
    tag, s, e = _der_tlv(value, 0, what)
    if tag != 0x30 or e != len(value):
        raise FwidError(f"{what}: not one DER SEQUENCE", reason="fwid_malformed")
    previous = -1
    fwids: tuple[int, int] | None = None
    for ktag, ks, ke in _children(value, s, e, what):
        number = ktag & 0x1F
        if ktag & 0xC0 != 0x80 or number <= previous:  # context tags, each once, in order
            raise FwidError(f"{what}: unexpected field tag 0x{ktag:02x}", reason="fwid_malformed")
        previous = number
        if number == 6:
            if ktag != 0xA6:
                raise FwidError(f"{what}: fwids is not constructed", reason="fwid_malformed")
            fwids = (ks, ke)
    if fwids is None:
        raise FwidError(f"{what}: no fwids", reason="fwid_malformed")
    entries = _children(value, fwids[0], fwids[1], what)
    if not entries or any(t != 0x30 for t, _, _ in entries):
        raise FwidError(f"{what}: fwids is not a list of FWIDs", reason="fwid_malformed")
    # every entry must be well formed, even though only the first is the FWID
    digests = [_fwid_from_digest_seq(value, es, ee, what) for _, es, ee in entries]
    return digests[0]


def leaf_fwid(leaf: x509.Certificate) -> bytes | None:
    """The FWID the leaf certificate carries, or None when it has neither extension."""
    found: dict[x509.ObjectIdentifier, bytes] = {}
    for ext in leaf.extensions:
        if ext.oid in (OID_FWID_HOPPER, OID_FWID_TCBINFO):
            if not isinstance(ext.value, x509.UnrecognizedExtension):
                raise FwidError("FWID extension has an unexpected type", reason="fwid_malformed")
            found[ext.oid] = ext.value.value
    if len(found) > 1:
        raise FwidError("leaf carries both FWID extensions", reason="fwid_malformed")
    if OID_FWID_TCBINFO in found:
        return _fwid_tcbinfo(found[OID_FWID_TCBINFO])
    if OID_FWID_HOPPER in found:
        return _fwid_hopper(found[OID_FWID_HOPPER])
    return None


def check_fwid(report: DeviceReport, leaf: x509.Certificate) -> FwidStatus:
    """Compare the report's FWID with the leaf's; absence in the report is returned, not hidden."""
    return compare_fwid(report, leaf_fwid(leaf))


def compare_fwid(report: DeviceReport, cert_fwid: bytes | None) -> FwidStatus:
    """``check_fwid`` with the leaf's FWID already extracted (``leaf_fwid``)."""
    report_fwid = report.opaque.fwid
    if report_fwid is None:
        return FwidStatus.ABSENT_IN_REPORT
    if cert_fwid is None:
        raise FwidError(
            "the report carries an FWID but the leaf certificate has no FWID extension",
            reason="fwid_missing_in_certificate",
        )
    if not hmac.compare_digest(cert_fwid, report_fwid):
        raise FwidError(
            f"report FWID {report_fwid.hex()} != leaf certificate FWID {cert_fwid.hex()}",
            reason="fwid_mismatch",
        )
    return FwidStatus.MATCH


# --- all checks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedDevice:
    """A report whose chain, signature, nonce (when one was expected) and FWID all passed."""

    evidence: DeviceEvidence
    arch: Arch
    report: DeviceReport
    chain: VerifiedChain
    fwid: FwidStatus
    nonce_checked: bool


def verify_device(
    evidence: DeviceEvidence,
    *,
    at: datetime,
    expected_nonce: bytes | None,
    chain_cache: ChainCache | None = None,
    report_cache: ReportCache | None = None,
) -> VerifiedDevice:
    """Run every device check; raise ``ReportParseError`` or a ``VerificationError`` at the first
    failure. ``expected_nonce=None`` skips only the nonce comparison (``nonce_checked`` False)."""
    at = require_aware(at)
    arch = resolve_arch(evidence)
    if report_cache is not None:
        report = report_cache.parse(evidence.report_bytes, arch.kind)
    else:
        report = parse_device_report(evidence.report_bytes, arch.kind)
    chain = verify_device_chain(evidence.chain, at=at, cache=chain_cache)
    verify_signature(report, chain.leaf)
    if expected_nonce is not None:
        check_nonce(report, expected_nonce)
    fwid = check_fwid(report, chain.leaf)
    return VerifiedDevice(
        evidence=evidence,
        arch=arch,
        report=report,
        chain=chain,
        fwid=fwid,
        nonce_checked=expected_nonce is not None,
    )
