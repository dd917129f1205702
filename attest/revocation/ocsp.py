"""OCSP (RFC 6960) revocation checks for X.509 chains: bytes and time in, a verdict out.

NVIDIA's verifier asks ``ocsp.ndis.nvidia.com`` about the middle certificates of every device
chain and about every RIM signer certificate, but it trusts whatever comes back far too much: it
never checks that the response is about the certificate it asked for, never checks
thisUpdate/nextUpdate, and accepts any responder whose certificate chains anywhere into the
NVIDIA PKI. This module does those checks, and it does them "as of" a time given by the caller so
that stapled responses (collateral kept with the evidence) can be re-checked offline and
replayed by an auditor.

Three layers:

* :func:`build_ocsp_request` makes the request NVIDIA's verifier sends (SHA-384 CertID, a
  critical 32-byte nonce extension), so the online fetcher in ``agent`` asks the same question.
* :func:`check_ocsp_response` judges one DER response for one (certificate, issuer) pair. It
  never raises on hostile bytes: malformed, forged, stale or mismatched responses come back as
  status ``"invalid"`` with a stable ``code`` and a one-line ``detail``, because one bad
  response must not crash the pipeline that is appraising eight GPUs. Only caller bugs raise
  (a naive datetime: :class:`~attest.errors.InputError`).
* :func:`check_chain_revocation` applies a :class:`RevocationMode` to chosen links of a chain,
  asking an :class:`OcspSource` (:class:`StapledOcsp` here; ``agent.ocsp_fetch.OnlineOcsp`` for
  the network) for each response.

The size limit on responses is enforced in two places with two behaviours, on purpose:
:class:`StapledOcsp` refuses an oversized or unparseable stapled response with an
``InputError``/``ParseError`` (it is the caller's input: CLI exit 2), while
:func:`check_ocsp_response` reports an oversized response as ``"invalid"`` (code
``too_large``) so the pipeline keeps going.

Not checked, by design: the revocation status of a delegated responder certificate (RFC 6960
§4.2.2.2.1 leaves that to the CA; NVIDIA's responders are not known to carry id-pkix-ocsp-nocheck)
and the extensions of SingleResponses other than the first one (``cryptography`` exposes only the
first; every responder we know of answers one certificate per response).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import Literal, Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, SignatureAlgorithmOID

from attest.concurrency import Deferred, offer, settle
from attest.errors import InputError, ParseError, RevocationError
from attest.timeutil import require_aware
from attest.x509chain import (
    X509_DECODE_ERRORS,
    certificate_der,
    describe,
    signature_bits_canonical,
)

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_MAX_AGE",
    "MAX_OCSP_RESPONSE_BYTES",
    "NVIDIA_DEVICE_OCSP_INDICES",
    "NVIDIA_OCSP_NONCE_BYTES",
    "OcspCache",
    "OcspCheck",
    "OcspPrefetch",
    "OcspSource",
    "OcspStatus",
    "RevocationMode",
    "StapledOcsp",
    "build_ocsp_request",
    "cert_id_key",
    "check_chain_revocation",
    "check_ocsp_response",
    "nvidia_device_ocsp_indices",
    "nvidia_rim_ocsp_indices",
]

# --------------------------------------------------------------------------------------------
# Bounds and defaults (each with its reason)
# --------------------------------------------------------------------------------------------

#: A basic OCSP response with one SingleResponse and a P-384 responder certificate is about
#: 1.5 KiB; 32 KiB leaves room for an RSA-4096 responder with its chain and refuses anything
#: that is clearly not an OCSP response before ``cryptography`` parses it.
MAX_OCSP_RESPONSE_BYTES = 32 * 1024
#: Responders include their own certificate and at most a short chain; more is not a response.
MAX_RESPONSE_CERTS = 4
#: NVIDIA's responder answers one certificate per request; RFC 6960 allows batches. A batch of
#: more than this is refused so that matching work stays bounded.
MAX_SINGLE_RESPONSES = 32
#: Stapled responses for one appraisal: an 8-GPU + 4-NVSwitch PPCIe box needs 12 x 3 device-chain
#: responses plus 3 per distinct RIM chain; 256 is several such boxes.
MAX_STAPLED_RESPONSES = 256
#: Total stapled bytes accepted at once (256 typical 2 KiB responses, with slack).
MAX_STAPLED_TOTAL_BYTES = 2 * 1024 * 1024
#: Responder and verifier clocks differ; a response dated up to this far in the future of the
#: verification time is accepted (OpenSSL's ``ocsp`` tool uses the same 5-minute leeway).
#: nextUpdate gets no leeway: a stale answer is stale.
CLOCK_SKEW = timedelta(minutes=5)
#: A response without nextUpdate says "newer information is always available" (RFC 6960
#: §4.2.2.1). We accept such a response for at most one day after its thisUpdate: long enough
#: for stapled collateral fetched when the evidence was collected, short enough that a
#: revocation is noticed within a day. Callers can pass a stricter ``max_age``.
DEFAULT_MAX_AGE = timedelta(days=1)
#: RFC 8954 §2.1: a nonce is 1 to 32 octets. NVIDIA's verifier sends 32 random bytes.
NONCE_MIN_BYTES = 1
NONCE_MAX_BYTES = 32
NVIDIA_OCSP_NONCE_BYTES = 32
#: The CertID hash NVIDIA's verifier uses (``OCSPRequestBuilder.add_certificate(..., SHA384())``).
NVIDIA_CERT_ID_HASH: hashes.HashAlgorithm = hashes.SHA384()

#: CertID hash algorithms we match on. SHA-1 stays: RFC 5019 responders key on it, and a CertID
#: hash only names the certificate (the response signature is what must resist forgery).
_CERT_ID_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

_KeyKind = Literal["ec", "rsa", "ed25519", "ed448"]
#: Response signature algorithms we accept, with the key type each needs. No SHA-1 or MD5
#: signatures (collisions), no RSASSA-PSS (no responder we target uses it; refused, not guessed).
_SIGNATURE_ALGORITHMS: dict[x509.ObjectIdentifier, tuple[_KeyKind, hashes.HashAlgorithm | None]] = {
    SignatureAlgorithmOID.ECDSA_WITH_SHA256: ("ec", hashes.SHA256()),
    SignatureAlgorithmOID.ECDSA_WITH_SHA384: ("ec", hashes.SHA384()),
    SignatureAlgorithmOID.ECDSA_WITH_SHA512: ("ec", hashes.SHA512()),
    SignatureAlgorithmOID.RSA_WITH_SHA256: ("rsa", hashes.SHA256()),
    SignatureAlgorithmOID.RSA_WITH_SHA384: ("rsa", hashes.SHA384()),
    SignatureAlgorithmOID.RSA_WITH_SHA512: ("rsa", hashes.SHA512()),
    SignatureAlgorithmOID.ED25519: ("ed25519", None),
    SignatureAlgorithmOID.ED448: ("ed448", None),
}

#: Device chains are leaf (attestation key) first, root last, exactly 5 certificates.
NVIDIA_DEVICE_CHAIN_LENGTH = 5
#: NVIDIA checks the three middle certificates of a device chain: not the leaf (its status is
#: the BROM's to vouch for; the responder has no entry for per-boot FMC leaves) and not the root.
NVIDIA_DEVICE_OCSP_INDICES = (1, 2, 3)


class RevocationMode(StrEnum):
    """Where OCSP answers come from. ``SKIP`` is explicit and can never yield a clean pass."""

    ONLINE = "online"
    STAPLED = "stapled"
    SKIP = "skip"


OcspStatus = Literal[
    "good", "revoked", "certificate_hold", "unknown", "missing", "invalid", "skipped"
]


@runtime_checkable
class OcspSource(Protocol):
    """Anything that can produce the DER OCSP response for (cert, issuer), or None if it has none.

    Implementations may raise :class:`~attest.errors.RevocationError` (e.g. reason
    ``ocsp_unreachable``); :func:`check_chain_revocation` turns that into a ``"missing"`` check.
    What they return is never trusted: it is verified by :func:`check_ocsp_response`.
    """

    def response_for(self, cert: x509.Certificate, issuer: x509.Certificate) -> bytes | None: ...


@dataclass(frozen=True)
class OcspCheck:
    """The verdict on one certificate's revocation status.

    ``ok`` is True only for ``good``, and for ``certificate_hold`` when the caller allowed holds.
    ``code`` is a stable machine-readable reason (the status itself when the response verified;
    e.g. ``bad_signature``, ``stale``, ``wrong_certificate`` for ``invalid``). ``response_der`` is
    the exact response judged, kept so it can be archived as collateral and replayed.
    """

    subject: str
    serial: int
    status: OcspStatus
    ok: bool
    revocation_reason: str | None
    revocation_time: datetime | None
    this_update: datetime | None
    next_update: datetime | None
    detail: str
    code: str = ""
    produced_at: datetime | None = None
    #: ``"issuer"`` when the CA signed the response itself, else the delegated responder's name.
    responder: str | None = None
    #: The CertID hash algorithm of the matching SingleResponse (``"sha384"`` for NVIDIA).
    cert_id_hash: str | None = None
    response_der: bytes | None = field(default=None, repr=False)

    @property
    def is_warning(self) -> bool:
        """Accepted but worth flagging: a hold the policy allowed."""
        return self.ok and self.status == "certificate_hold"


# --------------------------------------------------------------------------------------------
# CertID helpers
# --------------------------------------------------------------------------------------------


def _der_tlv(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, value start, value end) of the DER TLV at ``pos``; ValueError if it overruns."""
    if pos + 2 > len(buf):
        raise ValueError("short TLV")
    tag = buf[pos]
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(buf):
            raise ValueError("bad DER length")
        length = int.from_bytes(buf[pos : pos + count], "big")
        pos += count
    if pos + length > len(buf):
        raise ValueError("TLV overruns buffer")
    return tag, pos, pos + length


def _response_signature_bits_canonical(der: bytes) -> bool:
    """Is the BasicOCSPResponse's signature BIT STRING's unused-bits byte 0, as DER requires?

    ``cryptography`` ignores that byte (as for certificates: ``signature_bits_canonical``), so
    without this check the same signed response has 255 other encodings that verify: harmless
    for the status, but the response's exact bytes are what caches key on and what the log
    archives. Found by ``tests/revocation/test_ocsp_properties.py`` (a flipped unused-bits byte
    was still judged good). Only called on a response ``cryptography`` parsed as successful.
    """
    try:
        _, start, _ = _der_tlv(der, 0)  # OCSPResponse
        _, _, pos = _der_tlv(der, start)  # responseStatus
        _, pos, _ = _der_tlv(der, pos)  # [0] EXPLICIT responseBytes
        _, pos, _ = _der_tlv(der, pos)  # ResponseBytes SEQUENCE
        _, _, pos = _der_tlv(der, pos)  # responseType
        tag, inner, inner_end = _der_tlv(der, pos)  # response OCTET STRING
        if tag != 0x04:
            return False
        _, start, _ = _der_tlv(der, inner)  # BasicOCSPResponse
        _, _, pos = _der_tlv(der, start)  # tbsResponseData
        _, _, pos = _der_tlv(der, pos)  # signatureAlgorithm
        tag, bits_start, bits_end = _der_tlv(der, pos)
    except ValueError:
        return False
    return tag == 0x03 and inner_end >= bits_end > bits_start and der[bits_start] == 0


def _public_key_bits(key: CertificatePublicKeyTypes) -> bytes:
    """The subjectPublicKey BIT STRING contents (what OCSP key hashes cover, RFC 6960 §4.1.1)."""
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        tag, start, _end = _der_tlv(spki, 0)
        if tag != 0x30:
            raise ValueError("SubjectPublicKeyInfo is not a SEQUENCE")
        _tag, _s, alg_end = _der_tlv(spki, start)
        tag, bits_start, bits_end = _der_tlv(spki, alg_end)
        if tag != 0x03 or bits_end <= bits_start or spki[bits_start] != 0:
            raise ValueError("subjectPublicKey is not a whole-byte BIT STRING")
    except ValueError as exc:  # pragma: no cover - cryptography always serialises valid SPKI
        raise InputError(f"cannot encode issuer public key: {exc}") from exc
    return spki[bits_start + 1 : bits_end]


def _certificate_key_bits(cert: x509.Certificate, der: bytes | None = None) -> bytes:
    """``_public_key_bits(cert.public_key())``, read from the certificate's DER where that is
    provably the same bytes, because re-serialising a P-384 key costs several times more.

    For an EC key whose certificate carries the point uncompressed (``04 || X || Y`` at the
    curve's exact length, the only uncompressed form OpenSSL accepts), serialising the loaded
    key gives back exactly that point; anything else (RSA, EdDSA, a compressed or hybrid
    point) is serialised as before.
    """
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if der is None:
            der = certificate_der(cert)
        bits = _spki_bits(der)
        point_size = 1 + 2 * ((key.curve.key_size + 7) // 8)
        if bits is not None and len(bits) == point_size and bits[0] == 0x04:
            return bits
    return _public_key_bits(key)


def _spki_bits(der: bytes) -> bytes | None:
    """The subjectPublicKey BIT STRING contents of a certificate's DER (None: not found)."""
    try:
        _, start, _ = _der_tlv(der, 0)  # Certificate
        _, pos, _ = _der_tlv(der, start)  # TBSCertificate contents
        tag, _, end = _der_tlv(der, pos)
        if tag == 0xA0:  # [0] EXPLICIT version
            pos = end
        for _field in range(5):  # serialNumber, signature, issuer, validity, subject
            _, _, pos = _der_tlv(der, pos)
        tag, spki_start, _ = _der_tlv(der, pos)
        if tag != 0x30:
            return None
        _, _, alg_end = _der_tlv(der, spki_start)
        tag, bits_start, bits_end = _der_tlv(der, alg_end)
    except ValueError:
        return None
    if tag != 0x03 or bits_end <= bits_start or der[bits_start] != 0:
        return None
    return der[bits_start + 1 : bits_end]


def _cert_id_hashes(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    algorithm: str,
    key_bits: bytes | None = None,
) -> tuple[bytes, bytes]:
    """(issuerNameHash, issuerKeyHash) for ``cert`` under the named CertID hash.

    ``key_bits``: the issuer's ``_public_key_bits`` when the caller has them already
    (serialising a P-384 key costs about as much as the rest of a CertID).
    """
    name_der = cert.issuer.public_bytes()
    if key_bits is None:
        key_bits = _certificate_key_bits(issuer)
    return hashlib.new(algorithm, name_der).digest(), hashlib.new(algorithm, key_bits).digest()


def cert_id_key(
    cert: x509.Certificate, issuer: x509.Certificate, algorithm: str = "sha384"
) -> tuple[str, bytes, bytes, int]:
    """The CertID of ``cert`` as (hash name, issuer name hash, issuer key hash, serial).

    Used to index stapled responses and as the online fetcher's cache key.
    """
    if algorithm not in _CERT_ID_HASHES:
        raise InputError(f"unsupported CertID hash {algorithm!r}")
    name_hash, key_hash = _cert_id_hashes(cert, issuer, algorithm)
    return algorithm, name_hash, key_hash, cert.serial_number


def _key_sha1(cert: x509.Certificate, key_bits: bytes | None = None) -> bytes:
    """ResponderID byKey value: SHA-1 of the subjectPublicKey bits (RFC 6960 §4.2.1)."""
    if key_bits is None:
        key_bits = _certificate_key_bits(cert)
    return hashlib.sha1(key_bits, usedforsecurity=False).digest()


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


def build_ocsp_request(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    nonce: bytes | None,
    hash_algorithm: hashes.HashAlgorithm = NVIDIA_CERT_ID_HASH,
) -> bytes:
    """The DER OCSPRequest NVIDIA's verifier sends: one SHA-384 CertID and a critical nonce.

    The nonce is an argument (``attest`` has no randomness); the online fetcher passes 32 fresh
    random bytes, as NVIDIA does. ``nonce=None`` omits the extension (responders that pre-sign
    answers, RFC 5019, ignore nonces anyway).
    """
    if hash_algorithm.name not in _CERT_ID_HASHES:
        raise InputError(f"unsupported CertID hash {hash_algorithm.name!r}")
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hash_algorithm)
    if nonce is not None:
        if not NONCE_MIN_BYTES <= len(nonce) <= NONCE_MAX_BYTES:
            raise InputError(
                f"OCSP nonce must be {NONCE_MIN_BYTES}..{NONCE_MAX_BYTES} bytes, got {len(nonce)}"
            )
        builder = builder.add_extension(x509.OCSPNonce(bytes(nonce)), critical=True)
    return builder.build().public_bytes(serialization.Encoding.DER)


# --------------------------------------------------------------------------------------------
# Response verification
# --------------------------------------------------------------------------------------------


class _InvalidResponseError(Exception):
    """Internal: the response is not acceptable; becomes an ``invalid`` OcspCheck."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(detail)


def _signature_ok(
    key: CertificatePublicKeyTypes,
    oid: x509.ObjectIdentifier,
    signature: bytes,
    data: bytes,
) -> bool:
    spec = _SIGNATURE_ALGORITHMS.get(oid)
    if spec is None:
        raise _InvalidResponseError(
            "unsupported_algorithm", f"response signature algorithm {oid.dotted_string} refused"
        )
    kind, hash_alg = spec
    try:
        if kind == "ec" and isinstance(key, ec.EllipticCurvePublicKey):
            assert hash_alg is not None
            key.verify(signature, data, ec.ECDSA(hash_alg))
        elif kind == "rsa" and isinstance(key, rsa.RSAPublicKey):
            assert hash_alg is not None
            key.verify(signature, data, PKCS1v15(), hash_alg)
        elif (kind == "ed25519" and isinstance(key, ed25519.Ed25519PublicKey)) or (
            kind == "ed448" and isinstance(key, ed448.Ed448PublicKey)
        ):
            key.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class _Signer:
    cert: x509.Certificate
    label: str
    not_before: datetime | None
    not_after: datetime | None


def _find_signer(
    resp: ocsp.OCSPResponse, issuer: x509.Certificate, at: datetime, issuer_bits: bytes
) -> _Signer:
    """Step 2: who signed, and may they? The issuer itself, or a certificate it issued for OCSP."""
    by_name = resp.responder_name
    by_key = resp.responder_key_hash

    def named(cand: x509.Certificate, bits: bytes | None = None) -> bool:
        if by_name is not None:
            return cand.subject == by_name
        return by_key is not None and _key_sha1(cand, bits) == by_key

    if named(issuer, issuer_bits):
        return _Signer(issuer, "issuer", None, None)
    included = resp.certificates
    if len(included) > MAX_RESPONSE_CERTS:
        raise _InvalidResponseError(
            "malformed",
            f"response carries {len(included)} certificates; the limit is {MAX_RESPONSE_CERTS}",
        )
    delegated = next((c for c in included if named(c)), None)
    if delegated is None:
        who = by_name.rfc4514_string() if by_name is not None else f"key {by_key!r:.20}"
        raise _InvalidResponseError(
            "unauthorized_responder",
            f"response signed by '{who}', which is neither the issuer '{describe(issuer)}' nor a"
            " responder certificate included in the response",
        )
    if not signature_bits_canonical(delegated):
        raise _InvalidResponseError(
            "malformed", "responder certificate signature BIT STRING is not DER"
        )
    name = describe(delegated)
    if delegated.issuer != issuer.subject:
        raise _InvalidResponseError(
            "unauthorized_responder",
            f"responder '{name}' was not issued by '{describe(issuer)}'",
        )
    try:
        delegated.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        raise _InvalidResponseError(
            "unauthorized_responder",
            f"responder certificate '{name}' is not signed by '{describe(issuer)}'",
        ) from None
    try:
        eku = delegated.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        raise _InvalidResponseError(
            "unauthorized_responder",
            f"responder '{name}' lacks the id-kp-OCSPSigning extended key usage",
        )
    try:
        ku = delegated.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is not None and not ku.digital_signature:
        raise _InvalidResponseError(
            "unauthorized_responder", f"responder '{name}' may not sign (keyUsage)"
        )
    nb, na = delegated.not_valid_before_utc, delegated.not_valid_after_utc
    if at < nb:
        raise _InvalidResponseError(
            "responder_not_yet_valid",
            f"responder '{name}' is not valid before {nb.isoformat()} (at {at.isoformat()})",
        )
    if at > na:
        raise _InvalidResponseError(
            "responder_expired",
            f"responder '{name}' expired at {na.isoformat()} (at {at.isoformat()})",
        )
    return _Signer(delegated, name, nb, na)


def _match_single(
    singles: list[ocsp.OCSPSingleResponse],
    cert: x509.Certificate,
    issuer: x509.Certificate,
    issuer_bits: bytes,
) -> ocsp.OCSPSingleResponse:
    """Step 3: the SingleResponse about *this* certificate (serial and both issuer hashes)."""
    if not singles:
        raise _InvalidResponseError("malformed", "response holds no SingleResponse")
    if len(singles) > MAX_SINGLE_RESPONSES:
        raise _InvalidResponseError(
            "malformed",
            f"response holds {len(singles)} SingleResponses; the limit is {MAX_SINGLE_RESPONSES}",
        )
    computed: dict[str, tuple[bytes, bytes]] = {}
    same_serial = False
    seen_algs: list[str] = []
    for single in singles:
        alg = single.hash_algorithm.name
        seen_algs.append(alg)
        if alg not in _CERT_ID_HASHES:
            continue
        if alg not in computed:
            computed[alg] = _cert_id_hashes(cert, issuer, alg, issuer_bits)
        name_hash, key_hash = computed[alg]
        if single.serial_number != cert.serial_number:
            continue
        same_serial = True
        if single.issuer_name_hash == name_hash and single.issuer_key_hash == key_hash:
            return single
    if not computed:
        raise _InvalidResponseError(
            "unsupported_algorithm", f"CertID hash algorithm(s) {sorted(set(seen_algs))} refused"
        )
    if same_serial:
        detail = (
            f"response names serial {cert.serial_number:x} under a different issuer (issuer name"
            f" or key hash differs from '{describe(issuer)}')"
        )
    else:
        serials = ", ".join(f"{s.serial_number:x}" for s in singles[:4])
        detail = f"response is for serial {serials}, not {cert.serial_number:x}"
    raise _InvalidResponseError("wrong_certificate", detail)


def _check_extensions(resp: ocsp.OCSPResponse, single_count: int) -> bytes | None:
    """Refuse unknown critical extensions (RFC 5280 rule); return the nonce if present.

    ``cryptography`` exposes singleExtensions only when there is exactly one SingleResponse;
    batched responses (never seen from NVIDIA) go without that one check.
    """
    nonce: bytes | None = None
    for ext in resp.extensions:
        if isinstance(ext.value, x509.OCSPNonce):
            nonce = ext.value.nonce
        elif ext.critical:
            raise _InvalidResponseError(
                "unsupported_critical_extension",
                f"response extension {ext.oid.dotted_string} is critical and not understood",
            )
    if single_count == 1:
        for ext in resp.single_extensions:
            if ext.critical:
                raise _InvalidResponseError(
                    "unsupported_critical_extension",
                    f"single-response extension {ext.oid.dotted_string} is critical and not"
                    " understood",
                )
    return nonce


@dataclass(frozen=True)
class _Verified:
    check: OcspCheck
    #: Verification times for which the same check holds (used by the cache).
    window_start: datetime
    window_end: datetime


def _verify(
    der: bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    at: datetime,
    *,
    allow_hold: bool,
    expected_nonce: bytes | None,
    max_age: timedelta | None,
    issuer_bits: bytes | None = None,
) -> _Verified:
    subject, serial = describe(cert), cert.serial_number
    # 1. Well-formed (cryptography's DER parser rejects trailing and short data), successful.
    try:
        resp = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise _InvalidResponseError("malformed", f"not a DER OCSP response: {exc}") from None
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise _InvalidResponseError(
            "unsuccessful_status",
            f"responder answered '{resp.response_status.name.lower()}', not 'successful'",
        )
    if not _response_signature_bits_canonical(der):
        raise _InvalidResponseError(
            "malformed", "response signature BIT STRING is not DER (unused bits must be 0)"
        )
    # 2. Signed by the issuer or by a responder the issuer authorised, valid at `at`.
    if issuer_bits is None:  # once: steps 2 and 3 both hash it
        issuer_bits = _certificate_key_bits(issuer)
    signer = _find_signer(resp, issuer, at, issuer_bits)
    if not _signature_ok(
        signer.cert.public_key(),
        resp.signature_algorithm_oid,
        resp.signature,
        resp.tbs_response_bytes,
    ):
        raise _InvalidResponseError(
            "bad_signature", f"response signature does not verify with '{signer.label}' key"
        )
    # 3. About this certificate: serial, issuer name hash and issuer key hash.
    singles = list(resp.responses)
    single = _match_single(singles, cert, issuer, issuer_bits)
    nonce = _check_extensions(resp, len(singles))
    # 4. Fresh at `at`.
    this_update = single.this_update_utc
    next_update = single.next_update_utc
    produced_at = resp.produced_at_utc
    if next_update is not None and next_update < this_update:
        raise _InvalidResponseError("malformed", "nextUpdate is before thisUpdate")
    for label, when in (("thisUpdate", this_update), ("producedAt", produced_at)):
        if when > at + CLOCK_SKEW:
            raise _InvalidResponseError(
                "not_yet_valid",
                f"response {label} {when.isoformat()} is after the verification time"
                f" {at.isoformat()} (allowed skew {CLOCK_SKEW})",
            )
    limits: list[tuple[str, datetime]] = []
    if next_update is not None:
        limits.append(("nextUpdate", next_update))
    else:
        limits.append(("thisUpdate + default max age", this_update + DEFAULT_MAX_AGE))
    if max_age is not None:
        limits.append(("thisUpdate + max_age", this_update + max_age))
    label, until = min(limits, key=lambda item: item[1])
    if at > until:
        raise _InvalidResponseError(
            "stale",
            f"response expired at {until.isoformat()} ({label}); verification time {at.isoformat()}",
        )
    # 5. Nonce, when the caller sent one.
    if expected_nonce is not None:
        if nonce is None:
            raise _InvalidResponseError(
                "nonce_missing", "response carries no nonce but one was sent"
            )
        if nonce != expected_nonce:
            raise _InvalidResponseError(
                "nonce_mismatch", "response nonce differs from the nonce sent"
            )

    # 6. The status itself.
    def verdict(
        status: OcspStatus,
        ok: bool,
        detail: str,
        reason: str | None = None,
        revoked_at: datetime | None = None,
    ) -> OcspCheck:
        return OcspCheck(
            subject=subject,
            serial=serial,
            status=status,
            ok=ok,
            revocation_reason=reason,
            revocation_time=revoked_at,
            this_update=this_update,
            next_update=next_update,
            detail=detail,
            code=status,
            produced_at=produced_at,
            responder=signer.label,
            cert_id_hash=single.hash_algorithm.name,
            response_der=der,
        )

    cert_status = single.certificate_status
    if cert_status == ocsp.OCSPCertStatus.GOOD:
        check = verdict("good", True, "good")
    elif cert_status == ocsp.OCSPCertStatus.REVOKED:
        reason = single.revocation_reason
        revoked_at = single.revocation_time_utc
        reason_name = reason.name if reason is not None else "unspecified"
        if reason == x509.ReasonFlags.certificate_hold:
            allowed = "accepted: holds allowed" if allow_hold else "holds are not allowed"
            check = verdict(
                "certificate_hold",
                allow_hold,
                f"certificate is on hold ({allowed})",
                reason_name,
                revoked_at,
            )
        else:
            when_text = revoked_at.isoformat() if revoked_at is not None else "an unstated time"
            check = verdict(
                "revoked",
                False,
                f"revoked at {when_text}, reason {reason_name}",
                reason_name,
                revoked_at,
            )
    else:
        check = verdict("unknown", False, "responder does not know this certificate")
    start = max(this_update, produced_at) - CLOCK_SKEW
    end = until
    if signer.not_before is not None:
        start = max(start, signer.not_before)
    if signer.not_after is not None:
        end = min(end, signer.not_after)
    return _Verified(check, start, end)


def _invalid(cert: x509.Certificate, code: str, detail: str, der: bytes | None) -> OcspCheck:
    return OcspCheck(
        subject=describe(cert),
        serial=cert.serial_number,
        status="invalid",
        ok=False,
        revocation_reason=None,
        revocation_time=None,
        this_update=None,
        next_update=None,
        detail=detail,
        code=code,
        response_der=der,
    )


class OcspCache:
    """Remembers verified OCSP verdicts, keyed by the exact response bytes and the question.

    The key covers the response DER, the certificate and issuer DER, and every option that
    changes the verdict (allow_hold, nonce, max_age). A hit is used only when the verification
    time lies inside the window in which every time-dependent check gives the same answer
    (thisUpdate/producedAt minus skew .. nextUpdate or max age, narrowed to the delegated
    responder's validity), so a cached verdict is always the one a full check would give.
    ``invalid`` verdicts are never cached. Bounded (LRU) and thread-safe.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._max = max_entries
        self._entries: OrderedDict[bytes, _Verified] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(
        der: bytes,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        *,
        allow_hold: bool,
        expected_nonce: bytes | None,
        max_age: timedelta | None,
        cert_der: bytes | None = None,
        issuer_der: bytes | None = None,
    ) -> bytes:
        """The cache key (``cert_der``/``issuer_der``: the certificates' DER, if at hand)."""
        h = hashlib.sha256(b"lessee-ocsp-cache-v2")
        # ``max_age`` exactly: ``None`` (no bound) apart from every timedelta, ``timedelta(0)``
        # included (it is falsy, and once shared None's key, so a verdict cached without a
        # bound answered a max_age=0 check), and by its integer fields, not float seconds.
        age = (
            "none"
            if max_age is None
            else f"{max_age.days}d{max_age.seconds}s{max_age.microseconds}us"
        )
        option = f"{allow_hold}|{age}".encode()
        parts = (
            der,
            cert_der if cert_der is not None else certificate_der(cert),
            issuer_der if issuer_der is not None else certificate_der(issuer),
            b"" if expected_nonce is None else b"n" + expected_nonce,
            option,
        )
        for part in parts:
            h.update(len(part).to_bytes(4, "big"))
            h.update(part)
        return h.digest()

    def get(self, key: bytes, at: datetime) -> OcspCheck | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit.window_start <= at <= hit.window_end:
                self._entries.move_to_end(key)
                self.hits += 1
                return hit.check
            self.misses += 1
        return None

    def remembered(self, key: bytes, at: datetime) -> bool:
        """Whether ``get(key, at)`` would answer, without counting or reordering anything
        (for work started ahead: the real lookup happens later, in the caller's order)."""
        with self._lock:
            hit = self._entries.get(key)
        return hit is not None and hit.window_start <= at <= hit.window_end

    def put(self, key: bytes, verified: _Verified) -> None:
        with self._lock:
            self._entries[key] = verified
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def check_ocsp_response(
    der: bytes,
    *,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    at: datetime,
    allow_hold: bool = False,
    expected_nonce: bytes | None = None,
    max_age: timedelta | None = None,
    cache: OcspCache | None = None,
) -> OcspCheck:
    """Judge one DER OCSP response about ``cert`` (issued by ``issuer``) as of ``at``.

    Checks, in order (the first failure decides; the result is then status ``invalid``):

    1. size <= MAX_OCSP_RESPONSE_BYTES, strict DER, responseStatus ``successful``;
    2. the signer is the issuer itself, or a responder certificate included in the response
       that the issuer signed directly, with id-kp-OCSPSigning, valid at ``at``; the response
       signature verifies with that key (ECDSA/RSA-PKCS#1 with SHA-2, Ed25519/Ed448);
       no critical extension we do not understand;
    3. a SingleResponse names this certificate: serial, issuerNameHash and issuerKeyHash under
       its own CertID hash (SHA-1/256/384/512);
    4. thisUpdate and producedAt <= at + CLOCK_SKEW; at <= nextUpdate, or when nextUpdate is
       absent at <= thisUpdate + DEFAULT_MAX_AGE; and at <= thisUpdate + ``max_age`` if given;
    5. the nonce equals ``expected_nonce`` when one is expected;
    6. then the status: ``good`` (ok), ``revoked`` (reason and time reported),
       ``certificate_hold`` (ok only with ``allow_hold``), ``unknown``.

    Never raises on the response bytes; raises InputError only for a naive ``at``.
    """
    at = require_aware(at)
    started = _start_check(
        der,
        cert=cert,
        issuer=issuer,
        at=at,
        allow_hold=allow_hold,
        expected_nonce=expected_nonce,
        max_age=max_age,
        cache=cache,
    )
    if isinstance(started, OcspCheck):
        return started
    return started.finish(started.run())


@dataclass(frozen=True)
class _PendingCheck:
    """A response check the cache could not answer: ``run`` (the work, safe on any thread),
    then ``finish`` (remember it) in the caller's order."""

    data: bytes
    cert: x509.Certificate
    issuer: x509.Certificate
    at: datetime
    allow_hold: bool
    expected_nonce: bytes | None
    max_age: timedelta | None
    cache: OcspCache | None
    key: bytes
    issuer_der: bytes | None = None

    def run(self) -> _Verified | OcspCheck:
        """The full check: a verdict the cache may keep, or an ``invalid`` one it must not."""
        try:
            return _verify(
                self.data,
                self.cert,
                self.issuer,
                self.at,
                allow_hold=self.allow_hold,
                expected_nonce=self.expected_nonce,
                max_age=self.max_age,
                issuer_bits=_certificate_key_bits(self.issuer, self.issuer_der),
            )
        except _InvalidResponseError as bad:
            return _invalid(self.cert, bad.code, bad.detail, self.data)
        except (*X509_DECODE_ERRORS, UnsupportedAlgorithm) as exc:
            # cryptography parses lazily: a field it cannot decode surfaces on first access, a
            # repeated extension as DuplicateExtension (not a ValueError).
            return _invalid(
                self.cert, "malformed", f"undecodable OCSP response field: {exc}", self.data
            )

    def finish(self, outcome: _Verified | OcspCheck) -> OcspCheck:
        if isinstance(outcome, OcspCheck):
            return outcome
        if self.cache is not None:
            self.cache.put(self.key, outcome)
        return outcome.check


def _start_check(
    der: bytes,
    *,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    at: datetime,
    allow_hold: bool,
    expected_nonce: bytes | None,
    max_age: timedelta | None,
    cache: OcspCache | None,
    key: bytes | None = None,
    issuer_der: bytes | None = None,
) -> OcspCheck | _PendingCheck:
    """``check_ocsp_response`` up to the real work: the size bound and the cache (``key``: the
    cache key when the caller computed it already)."""
    data = bytes(der)
    if len(data) > MAX_OCSP_RESPONSE_BYTES:
        return _invalid(
            cert,
            "too_large",
            f"OCSP response is {len(data)} bytes; the limit is {MAX_OCSP_RESPONSE_BYTES}",
            None,
        )
    if cache is None:
        key = b""
    else:
        if key is None:
            key = OcspCache.key(
                data,
                cert,
                issuer,
                allow_hold=allow_hold,
                expected_nonce=expected_nonce,
                max_age=max_age,
            )
        hit = cache.get(key, at)
        if hit is not None:
            return hit
    return _PendingCheck(
        data,
        cert,
        issuer,
        at,
        allow_hold,
        expected_nonce,
        max_age,
        cache=cache,
        key=key,
        issuer_der=issuer_der,
    )


# --------------------------------------------------------------------------------------------
# Stapled responses
# --------------------------------------------------------------------------------------------


class StapledOcsp:
    """OCSP responses supplied with the evidence (collateral), indexed by CertID.

    Each response's SingleResponses are indexed by (hash algorithm, issuer name hash, issuer key
    hash, serial); :meth:`response_for` answers with the response naming the certificate under
    any of the algorithms present. When several responses name the same certificate, the one
    with the latest thisUpdate wins. Nothing here is trusted: the answer is verified by
    :func:`check_ocsp_response` like any other.

    Raises InputError (too many, too big) or ParseError (not an OCSP response, or an
    unsuccessful one, which names no certificate) at construction: stapled responses are
    caller input.
    """

    def __init__(self, responses: Iterable[bytes]) -> None:
        items = [bytes(r) for r in responses]
        if len(items) > MAX_STAPLED_RESPONSES:
            raise InputError(
                f"{len(items)} stapled OCSP responses; the limit is {MAX_STAPLED_RESPONSES}"
            )
        total = sum(len(r) for r in items)
        if total > MAX_STAPLED_TOTAL_BYTES:
            raise InputError(
                f"stapled OCSP responses total {total} bytes; the limit is {MAX_STAPLED_TOTAL_BYTES}"
            )
        self._responses = tuple(items)
        self._index: dict[tuple[str, bytes, bytes, int], tuple[datetime, bytes]] = {}
        self._algorithms: set[str] = set()
        #: id(issuer) -> (issuer, its subjectPublicKey bits): a chain's issuers are asked about
        #: again and again (each link, the verifier's key memo) and serialising a P-384 key
        #: costs about as much as the rest of a lookup. The certificate is kept, so its id
        #: cannot be reused while the entry lives.
        self._key_bits: dict[int, tuple[x509.Certificate, bytes]] = {}
        for number, der in enumerate(items):
            self._add(number, der)

    def _add(self, number: int, der: bytes) -> None:
        what = f"stapled OCSP response #{number + 1}"
        if len(der) > MAX_OCSP_RESPONSE_BYTES:
            raise InputError(f"{what} is {len(der)} bytes; the limit is {MAX_OCSP_RESPONSE_BYTES}")
        try:
            resp = ocsp.load_der_ocsp_response(der)
            if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
                raise ParseError(
                    f"{what} has status '{resp.response_status.name.lower()}' and names no"
                    " certificate"
                )
            singles = list(resp.responses)
            if not singles or len(singles) > MAX_SINGLE_RESPONSES:
                raise ParseError(f"{what} holds {len(singles)} SingleResponses")
            for single in singles:
                alg = single.hash_algorithm.name
                if alg not in _CERT_ID_HASHES:
                    continue
                key = (alg, single.issuer_name_hash, single.issuer_key_hash, single.serial_number)
                this_update = single.this_update_utc
                old = self._index.get(key)
                if old is None or this_update > old[0]:
                    self._index[key] = (this_update, der)
                self._algorithms.add(alg)
        except (*X509_DECODE_ERRORS, UnsupportedAlgorithm) as exc:
            raise ParseError(f"{what} is not a valid DER OCSP response: {exc}") from None

    @property
    def responses(self) -> tuple[bytes, ...]:
        """Every stapled response, in the order given (for archiving as collateral)."""
        return self._responses

    def __len__(self) -> int:
        return len(self._responses)

    def _issuer_key_bits(self, issuer: x509.Certificate) -> bytes:
        entry = self._key_bits.get(id(issuer))
        if entry is not None and entry[0] is issuer:
            return entry[1]
        bits = _certificate_key_bits(issuer)
        if len(self._key_bits) >= MAX_STAPLED_RESPONSES:  # bounded like the set itself
            self._key_bits.clear()
        self._key_bits[id(issuer)] = (issuer, bits)
        return bits

    def response_for(self, cert: x509.Certificate, issuer: x509.Certificate) -> bytes | None:
        if not self._algorithms:
            return None
        best: tuple[datetime, bytes] | None = None
        key_bits = self._issuer_key_bits(issuer)
        for alg in sorted(self._algorithms):
            name_hash, key_hash = _cert_id_hashes(cert, issuer, alg, key_bits)
            hit = self._index.get((alg, name_hash, key_hash, cert.serial_number))
            if hit is not None and (best is None or hit[0] > best[0]):
                best = hit
        return None if best is None else best[1]


class OcspPrefetch:
    """Stapled response checks started on the shared pool before their chain's turn comes.

    A verifier knows the certificates whose revocation it will check long before it checks
    them (a device chain as soon as the evidence is read, a RIM signer chain as soon as the RIM
    is parsed), while the step that reads the verdicts comes only after the chain itself
    verified. ``start`` asks the stapled set for each response and, for every one the verdict
    cache cannot answer, offers the response check (the signature work, GIL-free) to the pool
    at once; ``check_chain_revocation(..., prefetched=this)`` later takes the outcome instead
    of checking that response again.

    Nothing observable changes: the stapled set is pure, and a prefetched check is the same
    pure function of (response DER, certificate DER, issuer DER, options, time) that the chain
    check would run: an outcome is only taken for the same cache key and the same ``at``.
    ``check_chain_revocation`` still asks the source, consults the cache (its counters move
    only there) and remembers verdicts in index order, so verdicts, cache contents and counters
    are exactly those of the sequential check. Work started for a chain that later fails (and
    is never revocation-checked) is simply dropped: it has no side effect. Only for a
    ``StapledOcsp``: an online source does I/O, which must stay where and when the caller asks.
    """

    def __init__(
        self,
        source: StapledOcsp,
        *,
        at: datetime,
        allow_hold: bool = False,
        max_age: timedelta | None = None,
        cache: OcspCache,
    ) -> None:
        # The cache is required: its key is how ``check_chain_revocation`` finds a started
        # check (without one it keys nothing, and every response would be checked twice).
        self._source = source
        self._at = require_aware(at)
        self._allow_hold = allow_hold
        self._max_age = max_age
        self._cache = cache
        self._started: dict[bytes, Deferred[_Verified | OcspCheck]] = {}

    def __len__(self) -> int:
        """How many response checks were started."""
        return len(self._started)

    def start(self, certs: Sequence[x509.Certificate], indices: Iterable[int]) -> None:
        """Offer the checks of certs[i] (issued by certs[i + 1]) for every i in ``indices``.

        Speculative: anything unusual (an index without an issuer, no stapled answer, an
        oversized response, a certificate whose key cannot be read) starts nothing here; the
        chain check meets it at its own step and reports it exactly as before.
        """
        chain = tuple(certs)
        ders: dict[int, bytes] = {}
        for i in indices:
            if not 0 <= i < len(chain) - 1:
                continue
            cert, issuer = chain[i], chain[i + 1]
            try:
                der = self._source.response_for(cert, issuer)
                if der is None or len(der) > MAX_OCSP_RESPONSE_BYTES:
                    continue
                for position in (i, i + 1):
                    if position not in ders:
                        ders[position] = certificate_der(chain[position])
            except (*X509_DECODE_ERRORS, UnsupportedAlgorithm, InputError):
                continue  # the chain check raises or reports it at its step, as before
            key = OcspCache.key(
                der,
                cert,
                issuer,
                allow_hold=self._allow_hold,
                expected_nonce=None,
                max_age=self._max_age,
                cert_der=ders[i],
                issuer_der=ders[i + 1],
            )
            if key in self._started or self._cache.remembered(key, self._at):
                continue
            pending = _PendingCheck(
                bytes(der),
                cert,
                issuer,
                self._at,
                self._allow_hold,
                None,
                self._max_age,
                cache=self._cache,
                key=key,
                issuer_der=ders[i + 1],
            )
            self._started[key] = offer(Deferred(pending.run, leaf=True))

    def _take(self, key: bytes, *, at: datetime) -> Deferred[_Verified | OcspCheck] | None:
        """The check started for this question, if it was started for the same time (the key
        covers the bytes and the options; ``at`` is compared here)."""
        if at != self._at:
            return None
        return self._started.get(key)


# --------------------------------------------------------------------------------------------
# Chains
# --------------------------------------------------------------------------------------------


def nvidia_device_ocsp_indices(chain_length: int = NVIDIA_DEVICE_CHAIN_LENGTH) -> tuple[int, ...]:
    """Links of a device chain (leaf first, root last) NVIDIA's verifier checks: 1 .. n-2.

    For the 5-certificate GPU and NVSwitch chains: (1, 2, 3) = BROM, Provisioner ICA, Identity.
    """
    if chain_length < 3:
        raise InputError(f"a device chain of {chain_length} certificates has no middle links")
    return tuple(range(1, chain_length - 1))


def nvidia_rim_ocsp_indices(chain_length: int) -> tuple[int, ...]:
    """Links of a RIM signer chain NVIDIA's verifier checks: every certificate but the root.

    The chain is the RIM's KeyInfo certificates except the last, followed by the pinned RIM
    root (as nvtrust's ``RIM.verify`` builds it): signer, L3, CA, root -> (0, 1, 2).
    """
    if chain_length < 2:
        raise InputError(f"a RIM chain of {chain_length} certificates has nothing to check")
    return tuple(range(chain_length - 1))


def check_chain_revocation(
    certs: Sequence[x509.Certificate],
    *,
    indices: Sequence[int],
    mode: RevocationMode | str,
    source: OcspSource | None,
    at: datetime,
    allow_hold: bool = False,
    max_age: timedelta | None = None,
    cache: OcspCache | None = None,
    prefetched: OcspPrefetch | None = None,
) -> tuple[OcspCheck, ...]:
    """One :class:`OcspCheck` per index i, for certs[i] issued by certs[i + 1], in order.

    ``prefetched``: response checks already started for these certificates (see
    :class:`OcspPrefetch`); their outcomes are used in place of checking those responses
    again, with the same verdicts, cache contents and counters.

    ``SKIP`` gives ``skipped`` (ok=False: the caller may downgrade it to a warning, never to a
    pass). Otherwise the source is asked; no source, no answer, or a source that raised
    RevocationError (e.g. offline) gives ``missing`` (ok=False; policy decides, default rejects).
    Only caller bugs raise (InputError): unknown mode, index out of range, naive ``at``.
    """
    at = require_aware(at)
    try:
        mode = RevocationMode(mode)
    except ValueError:
        raise InputError(
            f"revocation mode must be one of {[m.value for m in RevocationMode]}, got {mode!r}"
        ) from None
    chain = tuple(certs)
    for i in indices:
        if not 0 <= i < len(chain) - 1:
            raise InputError(
                f"revocation index {i} has no issuer in a chain of {len(chain)} certificates"
            )
    # The source is asked, and the cache consulted, in index order in this thread; the
    # responses the cache cannot answer are then checked concurrently (their signatures
    # release the GIL) and remembered in index order, so the verdicts, the cache's contents
    # and its counters are those of checking one index after the other.
    slots: list[OcspCheck | _PendingCheck | Callable[[], OcspCheck]] = []
    started: set[bytes] = set()
    ders: dict[int, bytes] = {}

    def der_of(position: int) -> bytes:
        if position not in ders:
            ders[position] = certificate_der(chain[position])
        return ders[position]

    for i in indices:
        cert, issuer = chain[i], chain[i + 1]
        if mode == RevocationMode.SKIP:
            slots.append(_unchecked(cert, "skipped", "revocation not checked (mode skip)"))
            continue
        if source is None:
            slots.append(_unchecked(cert, "missing", f"no OCSP source (mode {mode.value})"))
            continue
        try:
            der = source.response_for(cert, issuer)
        except RevocationError as exc:
            slots.append(_unchecked(cert, "missing", f"{exc.reason}: {exc}", code=exc.reason))
            continue
        if der is None:
            slots.append(
                _unchecked(cert, "missing", f"no OCSP response for this certificate ({mode.value})")
            )
            continue
        ask = partial(
            check_ocsp_response,
            der,
            cert=cert,
            issuer=issuer,
            at=at,
            allow_hold=allow_hold,
            max_age=max_age,
            cache=cache,
        )
        if len(der) > MAX_OCSP_RESPONSE_BYTES:
            slots.append(ask())  # refused on its size alone
            continue
        key = b""
        if cache is not None:
            key = OcspCache.key(
                der,
                cert,
                issuer,
                allow_hold=allow_hold,
                expected_nonce=None,
                max_age=max_age,
                cert_der=der_of(i),
                issuer_der=der_of(i + 1),
            )
            if key in started:  # the same question twice: asked once the first is remembered
                slots.append(ask)
                continue
            started.add(key)
        slots.append(
            _start_check(
                der,
                cert=cert,
                issuer=issuer,
                at=at,
                allow_hold=allow_hold,
                expected_nonce=None,
                max_age=max_age,
                cache=cache,
                key=key or None,
                issuer_der=der_of(i + 1),
            )
        )
    pending = [s for s in slots if isinstance(s, _PendingCheck)]
    jobs: list[Deferred[_Verified | OcspCheck]] = []
    fresh: list[Deferred[_Verified | OcspCheck]] = []
    for p in pending:
        job = None
        if prefetched is not None and p.key:
            job = prefetched._take(p.key, at=at)
        if job is None:
            job = Deferred(p.run, leaf=True)
            fresh.append(job)
        jobs.append(job)
    for job in fresh[1:]:  # the first new one runs here, right away (as run_all does)
        offer(job)
    settle(jobs)
    outcomes = iter(jobs)
    results: list[OcspCheck] = []
    for slot in slots:
        if isinstance(slot, _PendingCheck):
            results.append(slot.finish(next(outcomes).result()))
        elif isinstance(slot, OcspCheck):
            results.append(slot)
        else:
            results.append(slot())
    return tuple(results)


def _unchecked(
    cert: x509.Certificate,
    status: Literal["skipped", "missing"],
    detail: str,
    *,
    code: str | None = None,
) -> OcspCheck:
    return OcspCheck(
        subject=describe(cert),
        serial=cert.serial_number,
        status=status,
        ok=False,
        revocation_reason=None,
        revocation_time=None,
        this_update=None,
        next_update=None,
        detail=detail,
        code=code or status,
    )
