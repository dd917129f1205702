"""C2SP tlog-cosignature/v1 witness cosignatures (Ed25519, signature type 0x04).

A witness that has checked a log's append-only growth cosigns its checkpoint; a client that
requires a quorum of independent witnesses is protected against a log showing it a private
fork (a split view). The note signature is ``key ID || timestamped_signature`` where
``timestamped_signature`` is ``u64 timestamp (big-endian POSIX seconds) || Ed25519[64]`` and
the signed message is

    cosignature/v1\\n
    time <timestamp in decimal>\\n
    <the whole checkpoint body, final newline included>

so the statement commits to the time and to every line of the checkpoint body (extension
lines included). The key ID is SHA-256(name || 0x0A || 0x04 || public key)[:4]: the 0x04 keeps
a witness key from being mistaken for a plain Ed25519 note key (type 0x01) and vice versa.

No published Ed25519 cosignature vector comes with its key, so the tests sign with a committed
test key and check the encoding against the spec text.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime

import nacl.exceptions
import nacl.signing

from attest.errors import InputError
from attest.log.checkpoint import parse_checkpoint
from attest.log.note import (
    ED25519_KEY_SIZE,
    ED25519_SIG_SIZE,
    NoteError,
    NoteSignature,
    NoteVerificationError,
    VerifierKey,
    check_key_name,
    key_id,
)
from attest.timeutil import require_aware

SIG_TYPE_COSIGNATURE_V1 = 0x04
COSIGNATURE_HEADER = b"cosignature/v1\n"
#: The spec caps the timestamp at 2**63 - 1 (it is a signed POSIX time in other encodings).
MAX_COSIGNATURE_TIMESTAMP = (1 << 63) - 1
TIMESTAMPED_SIGNATURE_SIZE = 8 + ED25519_SIG_SIZE


def cosigned_message(checkpoint_text: bytes, timestamp: int) -> bytes:
    """The exact bytes an Ed25519 cosigner signs for ``checkpoint_text`` at ``timestamp``."""
    if not 0 <= timestamp <= MAX_COSIGNATURE_TIMESTAMP:
        raise InputError("cosignature timestamp out of range")
    return COSIGNATURE_HEADER + b"time %d\n" % timestamp + checkpoint_text


def _time(timestamp: int) -> datetime:
    try:
        return datetime.fromtimestamp(timestamp, tz=UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise NoteError("cosignature timestamp is not a representable time") from exc


@dataclass(frozen=True)
class CosignatureVerifier:
    """A witness's Ed25519 cosigning key. ``not_after``: reject timestamps later than this."""

    name: str
    public_key: bytes
    not_after: datetime | None = None
    kind: str = field(default="cosignature/v1", init=False)

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.public_key) != ED25519_KEY_SIZE:
            raise InputError("an Ed25519 public key is 32 bytes")
        if self.not_after is not None:
            require_aware(self.not_after, name="not_after")

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, SIG_TYPE_COSIGNATURE_V1, self.public_key)

    @classmethod
    def from_vkey(
        cls, vkey: VerifierKey, *, not_after: datetime | None = None
    ) -> CosignatureVerifier:
        if vkey.sig_type != SIG_TYPE_COSIGNATURE_V1:
            raise NoteError(f"verifier key type {vkey.sig_type:#04x} is not a cosigner (0x04)")
        if len(vkey.key) != ED25519_KEY_SIZE:
            raise NoteError("cosigner key is not 32 bytes")
        v = cls(vkey.name, vkey.key, not_after)
        if v.key_id != vkey.key_id:
            raise NoteError("verifier key ID does not match its name and key")
        return v

    def vkey(self) -> str:
        return VerifierKey(
            self.name, self.key_id, SIG_TYPE_COSIGNATURE_V1, self.public_key
        ).encode()

    def verify(self, text: bytes, signature: bytes) -> datetime | None:
        if len(signature) != TIMESTAMPED_SIGNATURE_SIZE:
            raise NoteVerificationError(
                f"cosignature by {self.name} is {len(signature)} bytes, not "
                f"{TIMESTAMPED_SIGNATURE_SIZE}",
                reason="bad_signature",
            )
        (timestamp,) = struct.unpack(">Q", signature[:8])
        if timestamp > MAX_COSIGNATURE_TIMESTAMP:
            raise NoteVerificationError(
                f"cosignature by {self.name} has a timestamp above 2**63-1", reason="bad_signature"
            )
        parse_checkpoint(text)  # a cosignature is only defined over a checkpoint
        try:
            nacl.signing.VerifyKey(self.public_key).verify(
                cosigned_message(text, timestamp), signature[8:]
            )
        except nacl.exceptions.BadSignatureError as exc:
            raise NoteVerificationError(
                f"cosignature by {self.name} does not verify", reason="bad_signature"
            ) from exc
        when = _time(timestamp)
        if self.not_after is not None and when > self.not_after:
            raise NoteVerificationError(
                f"cosignature by {self.name} is dated in the future ({when.isoformat()})",
                reason="cosignature_in_future",
            )
        return when


@dataclass(frozen=True)
class Cosigner:
    """Signs cosignatures (tests and local witnesses). The seed is never printed."""

    name: str
    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.seed) != 32:
            raise InputError("an Ed25519 seed is 32 bytes")

    def verifier(self) -> CosignatureVerifier:
        pk = bytes(nacl.signing.SigningKey(self.seed).verify_key)
        return CosignatureVerifier(self.name, pk)

    def cosign(self, checkpoint_text: bytes, at: datetime) -> NoteSignature:
        """A cosignature line for ``checkpoint_text`` dated ``at`` (whole seconds)."""
        parse_checkpoint(checkpoint_text)
        timestamp = int(require_aware(at).timestamp())
        sig = nacl.signing.SigningKey(self.seed).sign(cosigned_message(checkpoint_text, timestamp))
        return NoteSignature(
            name=self.name,
            key_id=self.verifier().key_id,
            signature=struct.pack(">Q", timestamp) + bytes(sig.signature),
        )
