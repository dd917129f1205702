"""RFC 6962 TreeHeadSignatures, alone and as C2SP note signatures (type 0x05).

Static-CT logs (c2sp.org/static-ct-api, e.g. rome.ct.filippo.io) sign their checkpoints with
the log's RFC 6962 key so that the same signature also serves old CT clients: the note
signature is ``key ID || u64 timestamp (ms) || TLS DigitallySigned`` and what is signed is the
RFC 6962 §3.5 ``TreeHeadSignature`` struct built from the checkpoint's size and root, not the
note text. The key ID is SHA-256(name || 0x0A || 0x05 || SHA-256(SPKI DER))[:4]: the log ID of
RFC 6962 stands in for the key bytes.

Because the signed struct covers only size, root and timestamp, a checkpoint carrying extension
lines is refused here: those lines would look signed without being so.

We only verify these (to read real CT log heads); our own log signs with Ed25519.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attest.errors import InputError
from attest.log.checkpoint import parse_checkpoint
from attest.log.merkle import HASH_SIZE
from attest.log.note import (
    KEY_ID_SIZE,
    NoteError,
    NoteVerificationError,
    VerifierKey,
    check_key_name,
)

SIG_TYPE_RFC6962_STH = 0x05
#: TLS 1.2 HashAlgorithm sha256 and SignatureAlgorithm ecdsa (RFC 5246 §7.4.1.4.1).
TLS_HASH_SHA256 = 4
TLS_SIG_ECDSA = 3
#: A DER ECDSA P-256 signature is at most 72 bytes; larger is malformed.
MAX_ECDSA_DER_BYTES = 72
#: Largest SPKI accepted (a P-256 SPKI is 91 bytes).
MAX_SPKI_BYTES = 512


def tree_head_signature_input(timestamp_ms: int, tree_size: int, root_hash: bytes) -> bytes:
    """RFC 6962 §3.5 TreeHeadSignature: version v1 (0), signature_type tree_hash (1), ..."""
    if len(root_hash) != HASH_SIZE:
        raise InputError("root hash must be 32 bytes")
    return struct.pack(">BBQQ", 0, 1, timestamp_ms, tree_size) + root_hash


def _load_p256(spki_der: bytes) -> ec.EllipticCurvePublicKey:
    """The log's P-256 key, or ``NoteError``: the SPKI comes from a vkey an operator pasted, so
    every refusal -- ``UnsupportedAlgorithm`` for an unknown OID included, which is no
    ``ValueError`` -- is the typed error a vkey loader promises."""
    if len(spki_der) > MAX_SPKI_BYTES:
        raise NoteError("RFC 6962 log key too large")
    try:
        key = serialization.load_der_public_key(spki_der)
    except UnsupportedAlgorithm as exc:  # well-formed SPKI, algorithm OID cryptography lacks
        raise NoteError("RFC 6962 log key has an unsupported algorithm, not P-256") from exc
    except ValueError as exc:
        raise NoteError("RFC 6962 log key is not a DER SubjectPublicKeyInfo") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise NoteError("RFC 6962 log key is not ECDSA P-256")
    return key


def verify_digitally_signed(spki_der: bytes, message: bytes, digitally_signed: bytes) -> None:
    """Check a TLS ``DigitallySigned`` (sha256/ecdsa, u16 length, DER) over ``message``."""
    key = _load_p256(spki_der)
    if len(digitally_signed) < 4:
        raise NoteVerificationError("DigitallySigned is truncated", reason="bad_signature")
    hash_alg, sig_alg, length = struct.unpack(">BBH", digitally_signed[:4])
    if (hash_alg, sig_alg) != (TLS_HASH_SHA256, TLS_SIG_ECDSA):
        raise NoteVerificationError(
            f"DigitallySigned uses hash {hash_alg} / signature {sig_alg}, not sha256/ecdsa",
            reason="bad_signature",
        )
    der = digitally_signed[4:]
    if length != len(der) or length > MAX_ECDSA_DER_BYTES:
        raise NoteVerificationError("DigitallySigned length is wrong", reason="bad_signature")
    try:
        key.verify(der, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise NoteVerificationError(
            "RFC 6962 tree head signature does not verify", reason="bad_signature"
        ) from exc


def verify_sth(
    spki_der: bytes, *, tree_size: int, timestamp_ms: int, root_hash: bytes, signature: bytes
) -> None:
    """Verify a classic RFC 6962 ``get-sth`` answer (fields already decoded)."""
    verify_digitally_signed(
        spki_der, tree_head_signature_input(timestamp_ms, tree_size, root_hash), signature
    )


@dataclass(frozen=True)
class RFC6962Verifier:
    """A static-CT log key: name (the origin) and its P-256 SPKI."""

    name: str
    spki_der: bytes
    kind: str = field(default="rfc6962-sth", init=False)

    def __post_init__(self) -> None:
        check_key_name(self.name)
        _load_p256(self.spki_der)

    @property
    def key_id(self) -> bytes:
        log_id = hashlib.sha256(self.spki_der).digest()
        return hashlib.sha256(
            self.name.encode() + b"\n" + bytes([SIG_TYPE_RFC6962_STH]) + log_id
        ).digest()[:KEY_ID_SIZE]

    @classmethod
    def from_vkey(cls, vkey: VerifierKey) -> RFC6962Verifier:
        if vkey.sig_type != SIG_TYPE_RFC6962_STH:
            raise NoteError(f"verifier key type {vkey.sig_type:#04x} is not RFC 6962 (0x05)")
        v = cls(vkey.name, vkey.key)
        if v.key_id != vkey.key_id:
            raise NoteError("verifier key ID does not match its name and key")
        return v

    def verify(self, text: bytes, signature: bytes) -> datetime | None:
        cp = parse_checkpoint(text)
        if cp.extensions:
            raise NoteError("RFC 6962 signatures do not cover checkpoint extension lines")
        if cp.origin != self.name:
            raise NoteVerificationError(
                f"checkpoint origin {cp.origin!r} is not the CT log {self.name!r}",
                reason="bad_signature",
            )
        if len(signature) < 8:
            raise NoteVerificationError("RFC 6962 note signature truncated", reason="bad_signature")
        (timestamp_ms,) = struct.unpack(">Q", signature[:8])
        verify_sth(
            self.spki_der,
            tree_size=cp.size,
            timestamp_ms=timestamp_ms,
            root_hash=cp.root_hash,
            signature=signature[8:],
        )
        try:
            return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise NoteError("STH timestamp is not a representable time") from exc
