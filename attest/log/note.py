"""C2SP signed notes (c2sp.org/signed-note): parse, format, sign and verify.

A signed note is UTF-8 text ending in a newline, a blank line, and one or more lines
``— <key name> base64(key ID || signature)``. Checkpoints, witness cosignatures and Go's
checksum database all ride on it, so getting it byte-exact is what lets an auditor check our
checkpoints with any C2SP tool, and lets us check theirs.

Rules enforced here (the spec's MUSTs plus the bounds a parser of hostile input needs):

* valid UTF-8, no ASCII control character but newline, at most ``MAX_NOTE_BYTES``;
* the text ends in a newline and is separated from the signatures by the *last* blank line;
* every signature line is exactly em dash, space, key name, space, canonical base64, newline;
  key names are non-empty with no Unicode space and no ``+``; at most ``MAX_SIGNATURES`` lines;
  a (name, key ID) pair appears at most once.

Verification follows the spec: signatures from unknown keys (name *and* key ID must both
match) are ignored but counted; a known key whose signature fails rejects the whole note; a
note with no verified signature is rejected. Signature algorithms are pluggable through the
``NoteVerifier`` protocol: Ed25519 (type 0x01) lives here, tlog-cosignature/v1 (type 0x04) in
``attest.log.cosignature`` and RFC 6962 TreeHeadSignatures (type 0x05) in ``attest.log.sth``;
``attest.log.keys.load_verifier`` picks the right one for a vkey string.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

import nacl.exceptions
import nacl.signing

from attest.errors import InputError, ParseError, VerificationError

#: Largest note accepted. The spec asks verifiers to take at least 16 signatures and warns
#: that post-quantum ones approach 5 kB: 16 x ~6.6 kB base64 + text fits with ample margin.
MAX_NOTE_BYTES = 256 * 1024
#: Most signature lines accepted (the spec's floor is 16; Go's golang.org/x/mod/sumdb/note
#: also stops at 100). Bounds verification work per note.
MAX_SIGNATURES = 100
#: Longest key name in bytes; names are schema-less URLs, and this keeps errors printable.
MAX_KEY_NAME_BYTES = 256
#: Largest decoded signature (4-byte key ID + ML-DSA-87's 4627-byte signature + slack).
MAX_SIGNATURE_BYTES = 8192
#: Note key IDs are the first four bytes of a SHA-256 (big-endian uint32 on the wire).
KEY_ID_SIZE = 4

SIGNATURE_PREFIX = "— "  # em dash U+2014, space
SIG_TYPE_ED25519 = 0x01
ED25519_KEY_SIZE = 32
ED25519_SIG_SIZE = 64

#: ASCII controls other than newline (the spec bans them anywhere in a note).
_CONTROL_RE = re.compile(r"[\x00-\x09\x0b-\x1f]")
_VKEY_RE = re.compile(r"^([^+]+)\+([0-9a-f]{8})\+([A-Za-z0-9+/=]+)$")


class NoteError(ParseError):
    """A signed note, key or signature line that does not follow c2sp.org/signed-note."""


class NoteVerificationError(VerificationError):
    """A signed note did not verify. ``reason``: ``bad_signature`` or ``no_trusted_signature``."""


def b64decode_strict(text: str, *, field: str) -> bytes:
    """Standard padded base64 (RFC 4648 §4), canonical only: re-encoding gives the same text.

    Non-canonical forms (missing padding, non-zero trailing bits) would let one signature have
    several spellings; a note parser that keeps the original bytes has no use for that.
    """
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise NoteError("not standard base64", field=field) from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteError("base64 is not in canonical form", field=field)
    return raw


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def key_id(name: str, sig_type: int, key_material: bytes) -> bytes:
    """SHA-256(key name || 0x0A || signature type || public key)[:4] (the recommended key ID)."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + key_material).digest()[
        :KEY_ID_SIZE
    ]


#: Key names that passed ``check_key_name``, so that the log's own name, met on every
#: signature line and every key a verifier builds, is checked character by character once per
#: process; bounded (cleared when full) since notes can carry any names.
_VALID_KEY_NAMES: set[str] = set()
MAX_REMEMBERED_KEY_NAMES = 256


def check_key_name(name: str, *, field: str = "key name") -> None:
    """Non-empty, bounded, no Unicode space, no ``+``, no control characters."""
    if name in _VALID_KEY_NAMES:
        return
    if not name:
        raise NoteError("key name is empty", field=field)
    if len(name.encode()) > MAX_KEY_NAME_BYTES:
        raise NoteError(f"key name longer than {MAX_KEY_NAME_BYTES} bytes", field=field)
    for ch in name:
        if ch.isspace() or ch == "+" or ord(ch) < 0x20:
            raise NoteError(f"key name contains {ch!r}", field=field)
    if len(_VALID_KEY_NAMES) >= MAX_REMEMBERED_KEY_NAMES:
        _VALID_KEY_NAMES.clear()
    _VALID_KEY_NAMES.add(name)


@dataclass(frozen=True)
class NoteSignature:
    """One signature line, as it appeared."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        return f"{SIGNATURE_PREFIX}{self.name} {b64encode(self.key_id + self.signature)}\n"


@dataclass(frozen=True)
class Note:
    """A parsed signed note. ``text`` are the signed bytes; ``raw`` the whole note as given."""

    text: bytes
    signatures: tuple[NoteSignature, ...]
    raw: bytes


def _check_chars(data: bytes, *, what: str) -> str:
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise NoteError(f"{what} is not valid UTF-8", offset=exc.start) from exc
    bad = _CONTROL_RE.search(text)
    if bad is not None:
        raise NoteError(
            f"{what} contains control character {ord(bad.group()):#04x}",
            field=f"character {bad.start()}",
        )
    return text


def check_text(text: bytes) -> None:
    """A note text: bounded, UTF-8, no controls, ends in a newline."""
    if len(text) > MAX_NOTE_BYTES:
        raise NoteError(f"note text larger than {MAX_NOTE_BYTES} bytes")
    _check_chars(text, what="note text")
    if not text.endswith(b"\n"):
        raise NoteError("note text does not end in a newline")


def parse_note(data: bytes) -> Note:
    """Split a signed note into its text and signature lines (no verification)."""
    if len(data) > MAX_NOTE_BYTES:
        raise NoteError(f"note larger than {MAX_NOTE_BYTES} bytes")
    _check_chars(data, what="note")
    split = data.rfind(b"\n\n")
    if split < 0:
        raise NoteError("no blank line between text and signatures")
    text, sig_block = data[: split + 1], data[split + 2 :]
    if not sig_block:
        raise NoteError("note has no signature lines")
    if not sig_block.endswith(b"\n"):
        raise NoteError("signature block does not end in a newline", offset=len(data))
    lines = sig_block[:-1].decode().split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"more than {MAX_SIGNATURES} signatures")
    sigs: list[NoteSignature] = []
    seen: set[tuple[str, bytes]] = set()
    for n, line in enumerate(lines):
        where = f"signature line {n}"
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteError(
                "signature line does not start with an em dash and a space", field=where
            )
        body = line[len(SIGNATURE_PREFIX) :]
        name, sep, b64 = body.partition(" ")
        if not sep:
            raise NoteError("signature line has no space after the key name", field=where)
        check_key_name(name, field=where)
        if len(b64) > (MAX_SIGNATURE_BYTES * 4) // 3 + 4:
            raise NoteError(f"signature longer than {MAX_SIGNATURE_BYTES} bytes", field=where)
        raw = b64decode_strict(b64, field=where)
        if len(raw) <= KEY_ID_SIZE:
            raise NoteError("signature shorter than key ID plus one byte", field=where)
        sig = NoteSignature(name=name, key_id=raw[:KEY_ID_SIZE], signature=raw[KEY_ID_SIZE:])
        if (sig.name, sig.key_id) in seen:
            raise NoteError("two signatures from the same key", field=where)
        seen.add((sig.name, sig.key_id))
        sigs.append(sig)
    return Note(text=text, signatures=tuple(sigs), raw=data)


def format_note(text: bytes, signatures: Sequence[NoteSignature]) -> bytes:
    """Text, blank line, one line per signature. Refuses anything ``parse_note`` would."""
    check_text(text)
    if not signatures:
        raise InputError("a signed note needs at least one signature")
    out = text + b"\n" + "".join(s.line() for s in signatures).encode()
    parse_note(out)  # the format is its own check: what we emit, we accept
    return out


@runtime_checkable
class NoteVerifier(Protocol):
    """What ``verify_note`` needs from a key: its name, key ID and a check of one signature.

    ``verify`` returns the signature's timestamp when the algorithm carries one (cosignatures,
    RFC 6962 STHs) and ``None`` otherwise; it raises ``NoteVerificationError`` on a bad
    signature and ``NoteError`` when the signature or the text is malformed for its type.
    """

    @property
    def name(self) -> str: ...
    @property
    def key_id(self) -> bytes: ...
    @property
    def kind(self) -> str: ...
    def verify(self, text: bytes, signature: bytes) -> datetime | None: ...


@dataclass(frozen=True)
class VerifierKey:
    """A parsed verifier key string ``<name>+<key ID hex>+base64(<type> || <key>)``."""

    name: str
    key_id: bytes
    sig_type: int
    key: bytes

    def encode(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{b64encode(bytes([self.sig_type]) + self.key)}"


#: Longest verifier key string (an ML-DSA-44 key is 1312 bytes, ~1.8 kB of base64).
MAX_VKEY_CHARS = 4096


def parse_vkey(text: str) -> VerifierKey:
    """Parse a verifier key. The key ID is *not* checked here: it depends on the type."""
    text = text.strip("\n")
    if len(text) > MAX_VKEY_CHARS:
        raise NoteError(f"verifier key longer than {MAX_VKEY_CHARS} characters")
    m = _VKEY_RE.match(text)
    if m is None:
        raise NoteError("verifier key is not <name>+<8 lowercase hex>+<base64>")
    name, kid, b64 = m.groups()
    check_key_name(name)
    raw = b64decode_strict(b64, field="verifier key")
    if len(raw) < 2:
        raise NoteError("verifier key has no key material", field="verifier key")
    return VerifierKey(name=name, key_id=bytes.fromhex(kid), sig_type=raw[0], key=raw[1:])


@dataclass(frozen=True)
class Ed25519Verifier:
    """Type 0x01 Ed25519 note signatures over the note text (RFC 8032)."""

    name: str
    key_id: bytes
    public_key: bytes
    kind: str = field(default="ed25519", init=False)
    #: Built once: a log's key verifies one signature per checkpoint.
    _verify_key: nacl.signing.VerifyKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.key_id) != KEY_ID_SIZE:
            raise InputError("key ID must be 4 bytes")
        if len(self.public_key) != ED25519_KEY_SIZE:
            raise InputError("an Ed25519 public key is 32 bytes")
        object.__setattr__(self, "_verify_key", nacl.signing.VerifyKey(bytes(self.public_key)))

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes) -> Ed25519Verifier:
        """The standard C2SP key: key ID = SHA-256(name || 0x0A || 0x01 || key)[:4]."""
        return cls(name, key_id(name, SIG_TYPE_ED25519, public_key), public_key)

    @classmethod
    def from_vkey(cls, vkey: str | VerifierKey) -> Ed25519Verifier:
        vk = parse_vkey(vkey) if isinstance(vkey, str) else vkey
        if vk.sig_type != SIG_TYPE_ED25519:
            raise NoteError(f"verifier key type {vk.sig_type:#04x} is not Ed25519 (0x01)")
        if len(vk.key) != ED25519_KEY_SIZE:
            raise NoteError("Ed25519 verifier key is not 32 bytes")
        if vk.key_id != key_id(vk.name, SIG_TYPE_ED25519, vk.key):
            raise NoteError("verifier key ID does not match its name and key")
        return cls(vk.name, vk.key_id, vk.key)

    def vkey(self) -> str:
        return VerifierKey(self.name, self.key_id, SIG_TYPE_ED25519, self.public_key).encode()

    def verify(self, text: bytes, signature: bytes) -> datetime | None:
        if len(signature) != ED25519_SIG_SIZE:
            raise NoteVerificationError(
                f"Ed25519 signature by {self.name} is {len(signature)} bytes, not 64",
                reason="bad_signature",
            )
        try:
            self._verify_key.verify(text, signature)
        except nacl.exceptions.BadSignatureError as exc:
            raise NoteVerificationError(
                f"Ed25519 signature by {self.name} does not verify", reason="bad_signature"
            ) from exc
        return None


@dataclass(frozen=True)
class NoteSigner:
    """An Ed25519 note signer. The seed never appears in ``repr`` or error messages.

    The key pair and key id are derived once, here: deriving them from the seed on every
    signature cost the log writer two scalar multiplications per checkpoint (issue #5).
    """

    name: str
    seed: bytes = field(repr=False)
    _signing_key: nacl.signing.SigningKey = field(init=False, repr=False, compare=False)
    _key_id: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.seed) != 32:
            raise InputError("an Ed25519 seed is 32 bytes")
        signing_key = nacl.signing.SigningKey(self.seed)
        object.__setattr__(self, "_signing_key", signing_key)
        object.__setattr__(
            self, "_key_id", key_id(self.name, SIG_TYPE_ED25519, bytes(signing_key.verify_key))
        )

    @property
    def public_key(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    @property
    def key_id(self) -> bytes:
        return self._key_id

    def verifier(self) -> Ed25519Verifier:
        return Ed25519Verifier.from_public_key(self.name, self.public_key)

    def sign(self, text: bytes) -> NoteSignature:
        sig = self._signing_key.sign(text).signature
        return NoteSignature(name=self.name, key_id=self._key_id, signature=bytes(sig))


def sign_note(text: bytes, signers: Sequence[NoteSigner]) -> bytes:
    """A signed note of ``text`` with one Ed25519 signature per signer, in order."""
    check_text(text)
    return format_note(text, [s.sign(text) for s in signers])


@dataclass(frozen=True)
class VerifiedSignature:
    """A signature line that verified, with the algorithm's timestamp if it has one."""

    name: str
    key_id: bytes
    kind: str
    timestamp: datetime | None


@dataclass(frozen=True)
class VerifiedNote:
    """A note with at least one verified signature. Only ``text`` may be trusted."""

    note: Note
    verified: tuple[VerifiedSignature, ...]
    unknown_signatures: int

    @property
    def text(self) -> bytes:
        return self.note.text


def verify_note(note: bytes | Note, verifiers: Sequence[NoteVerifier]) -> VerifiedNote:
    """Verify a note against trusted keys (see the module docstring for the rules)."""
    parsed = parse_note(note) if isinstance(note, bytes) else note
    by_id: dict[tuple[str, bytes], NoteVerifier] = {}
    for v in verifiers:
        k = (v.name, bytes(v.key_id))
        if k in by_id:
            raise InputError(f"two verifiers share the name {v.name!r} and key ID {v.key_id.hex()}")
        by_id[k] = v
    verified: list[VerifiedSignature] = []
    unknown = 0
    for sig in parsed.signatures:
        known = by_id.get((sig.name, sig.key_id))
        if known is None:
            unknown += 1
            continue
        ts = known.verify(parsed.text, sig.signature)
        verified.append(VerifiedSignature(sig.name, sig.key_id, known.kind, ts))
    if not verified:
        raise NoteVerificationError(
            f"no signature from a trusted key ({unknown} from unknown keys)",
            reason="no_trusted_signature",
        )
    return VerifiedNote(note=parsed, verified=tuple(verified), unknown_signatures=unknown)
