"""Response keys and the record layer of the token stream.

Keys (as OHTTP derives response keys, RFC 9458 §4.4, with the request secret in place of the HPKE
exporter secret, which cryptography's single-shot HPKE does not expose)::

    salt       = enc || response_nonce
    prk        = HKDF-Extract(salt, request_secret)                      (SHA-256)
    key        = HKDF-Expand(prk, "lessee token-stream v1 response key", 32)
    base_nonce = HKDF-Expand(prk, "lessee token-stream v1 response nonce", 12)

The enclave draws ``response_nonce`` fresh for every response. A request replayed to the
enclave therefore yields new keys, and those keys are still behind the request secret, which only
the client (and the enclave) ever held: the replaying relay gets ciphertext it cannot read, and
the original client, whose state has moved on or ended, refuses it.

Records (AES-256-GCM, nonce = base_nonce XOR seq, as in RFC 9180's per-message nonces and in
chunked OHTTP)::

    record    = flags u8 | ciphertext [record_size + 16]
    flags     = 0x00 (more records follow) or 0x01 (final record)
    aad       = version u8 = 1 | flags u8
    plaintext = type u8 | length u16 | payload [length] | zero padding to record_size

Every record of a stream therefore has the same size, whatever its type or payload: the relay
sees only the count, the timing and the final flag (which it would learn anyway when the stream
ends). The record type (token part, token end, cover, clean end, abort) is encrypted, so the
relay cannot tell cover records from tokens, or a clean end from an abort.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from attest.errors import ParseError
from sealing.hpke_suite import AEAD_TAG_LEN, Rng
from sealing.stream.errors import StreamError

VERSION = 1
RESPONSE_NONCE_LEN = 32  # max(Nk, Nn) for AES-256-GCM, as RFC 9458 §4.4 chooses
KEY_LEN = 32
NONCE_LEN = 12
KEY_LABEL = b"lessee token-stream v1 response key"
NONCE_LABEL = b"lessee token-stream v1 response nonce"
#: The response head: version u8 | response_nonce [32]. Sent once, before the first record.
HEAD_LEN = 1 + RESPONSE_NONCE_LEN

FLAG_MORE = 0x00
FLAG_FINAL = 0x01
#: Framing inside each record plaintext: type u8 + length u16.
FRAME_LEN = 3
#: Clear bytes and tag added to each record plaintext on the wire.
RECORD_OVERHEAD = 1 + AEAD_TAG_LEN

#: Records one stream key may protect. RFC 8446 §5.5 caps AES-GCM at 2^24.5 full-size records per
#: key for a 2^-57 confidentiality margin; our records are far smaller, so 2^24 keeps a wider
#: margin. It also bounds the counter far below the 96-bit nonce space, and no generation comes
#: near it (``MAX_NEW_TOKENS`` is 2^20). One slot is reserved for the final record.
MAX_RECORDS_PER_STREAM = 1 << 24


class RecordType(enum.IntEnum):
    """Encrypted record type. Never renumber; a new type needs a new protocol version."""

    #: A full-capacity slice of a token that continues in the next record.
    TOKEN_PART = 0x01
    #: The last (or only) slice of a token: the client emits the token.
    TOKEN_END = 0x02
    #: No content; sent for timing cover. Payload length 0.
    COVER = 0x03
    #: Final record, clean close. Payload length 0; flags FINAL.
    END = 0x04
    #: Final record, the enclave gave up. Payload: reason code u16; flags FINAL.
    ABORT = 0x05


FINAL_TYPES = frozenset({RecordType.END, RecordType.ABORT})


@dataclass(frozen=True)
class ResponseKeys:
    """The AEAD key and base nonce of one response. Never printed."""

    key: bytes = field(repr=False)
    base_nonce: bytes = field(repr=False)


def derive_response_keys(request_secret: bytes, enc: bytes, response_nonce: bytes) -> ResponseKeys:
    """Derive the response keys (see the module docstring for the exact construction)."""
    if len(response_nonce) != RESPONSE_NONCE_LEN:
        raise ValueError("response nonce must be 32 bytes")
    prk = hmac.new(enc + response_nonce, request_secret, hashlib.sha256).digest()
    key = HKDFExpand(hashes.SHA256(), KEY_LEN, KEY_LABEL).derive(prk)
    base_nonce = HKDFExpand(hashes.SHA256(), NONCE_LEN, NONCE_LABEL).derive(prk)
    return ResponseKeys(key, base_nonce)


def new_response_nonce(rng: Rng) -> bytes:
    """Draw the enclave's response nonce from ``rng``."""
    nonce = rng(RESPONSE_NONCE_LEN)
    if len(nonce) != RESPONSE_NONCE_LEN:
        raise ValueError("rng returned the wrong number of bytes")
    return nonce


def encode_head(response_nonce: bytes) -> bytes:
    """``version || response_nonce``."""
    return bytes([VERSION]) + response_nonce


def decode_head(head: bytes) -> bytes:
    """Strictly decode a response head; returns the response nonce."""
    head = bytes(head)
    if len(head) != HEAD_LEN:
        raise ParseError(f"response head is {len(head)} bytes, want {HEAD_LEN}", field="head")
    if head[0] != VERSION:
        raise ParseError(f"unsupported response version {head[0]}", offset=0, field="version")
    return head[1:]


def record_len(record_size: int) -> int:
    """Bytes on the wire of every record of a stream with this record plaintext size."""
    return record_size + RECORD_OVERHEAD


_AAD = {FLAG_MORE: bytes([VERSION, FLAG_MORE]), FLAG_FINAL: bytes([VERSION, FLAG_FINAL])}
#: Per record type: the clear flags byte and the AAD that binds it.
_SEAL_FLAGS: dict[int, tuple[bytes, bytes]] = {
    t: (bytes([f]), _AAD[f])
    for t in RecordType
    for f in [FLAG_FINAL if t in FINAL_TYPES else FLAG_MORE]
}
_FRAME = struct.Struct(">BH")
_TOKEN_END = RecordType.TOKEN_END.value
_FLAG_MORE_BYTE = bytes([FLAG_MORE])
_AAD_MORE = _AAD[FLAG_MORE]
#: Payload lengths whose TOKEN_END frame is precomputed: every real token (vocabularies top out
#: below 256 bytes); a longer one packs its frame.
_FRAME_TABLE_LEN = 256
_TOKEN_END_FRAMES = tuple(_FRAME.pack(_TOKEN_END, n) for n in range(_FRAME_TABLE_LEN))


class _RecordCipher:
    """Shared state of sealer and opener: the AEAD, the base nonce as an integer, the size."""

    __slots__ = ("_aead", "_base", "capacity", "record_size", "wire_len")

    def __init__(self, keys: ResponseKeys, record_size: int) -> None:
        self._aead = AESGCM(keys.key)
        self._base = int.from_bytes(keys.base_nonce, "big")
        self.record_size = record_size
        self.capacity = record_size - FRAME_LEN
        self.wire_len = record_len(record_size)

    def _nonce(self, seq: int) -> bytes:
        return (self._base ^ seq).to_bytes(NONCE_LEN, "big")


class RecordSealer(_RecordCipher):
    """Seals records for sequence numbers the caller tracks (the session enforces order)."""

    __slots__ = ()

    def seal(self, seq: int, rtype: RecordType, payload: bytes) -> bytes:
        """One record: frame, pad to ``record_size``, encrypt under the seq-th nonce."""
        n = len(payload)
        if n > self.capacity:
            raise ValueError("payload exceeds the record capacity")
        # The flags byte and AAD come from a table keyed by the type (no enum hashing).
        flag_byte, aad = _SEAL_FLAGS[rtype]
        plain = _FRAME.pack(rtype, n) + payload.ljust(self.capacity, b"\x00")
        return flag_byte + self._aead.encrypt(
            (self._base ^ seq).to_bytes(NONCE_LEN, "big"), plain, aad
        )

    def seal_token_end(self, seq: int, payload: bytes) -> bytes:
        """``seal(seq, TOKEN_END, payload)``, byte for byte: the one-record token that nearly
        every token is. It runs once per token between two gRPC writes, with the caches cold,
        so it does the least: the frame from a table, the padding by ``ljust``, the flags and
        AAD as constants."""
        n = len(payload)
        if n > self.capacity:
            raise ValueError("payload exceeds the record capacity")
        frame = _TOKEN_END_FRAMES[n] if n < _FRAME_TABLE_LEN else _FRAME.pack(_TOKEN_END, n)
        plain = frame + payload.ljust(self.capacity, b"\x00")
        return _FLAG_MORE_BYTE + self._aead.encrypt(
            (self._base ^ seq).to_bytes(NONCE_LEN, "big"), plain, _AAD_MORE
        )


class RecordOpener(_RecordCipher):
    """Opens records; every failure is the opaque :class:`StreamError`."""

    __slots__ = ()

    def open(self, seq: int, record: bytes) -> tuple[RecordType, bytes]:
        """Authenticate and unframe the seq-th record: (type, payload).

        Checked: exact length, known flags, AEAD under this seq's nonce with the flags in the
        AAD, known type consistent with the final flag, length within capacity, padding zero,
        and the per-type payload rule (cover and end empty, abort exactly 2 bytes, a token part
        full, a token end non-empty).
        """
        if len(record) != self.wire_len:
            raise StreamError()
        flags = record[0]
        aad = _AAD.get(flags)
        if aad is None:
            raise StreamError()
        try:
            plain = self._aead.decrypt(
                (self._base ^ seq).to_bytes(NONCE_LEN, "big"), record[1:], aad
            )
        except InvalidTag:
            raise StreamError() from None
        raw_type = plain[0]
        length = plain[1] << 8 | plain[2]
        if raw_type == _TOKEN_END and flags == FLAG_MORE:
            # The per-token case first, with the checks its rule makes (non-final flag, 1 to
            # capacity bytes, zero padding: all bytes after the payload are zero), so a token
            # costs no rule lookup and no padding slices. Everything else takes the rules.
            if not 0 < length <= self.capacity:
                raise StreamError()
            end = FRAME_LEN + length
            if plain.count(0, end) != self.record_size - end:
                raise StreamError()
            return RecordType.TOKEN_END, plain[FRAME_LEN:end]
        # Every other record: its type's rule from a table.
        rule = _OPEN_RULES.get(raw_type)
        if rule is None:
            raise StreamError()
        rtype, final, min_len, max_len = rule
        if final != (flags == FLAG_FINAL) or length > self.capacity:
            raise StreamError()
        if not min_len <= length <= (self.capacity if max_len < 0 else max_len):
            raise StreamError()
        if rtype is RecordType.TOKEN_PART and length != self.capacity:
            raise StreamError()
        end = FRAME_LEN + length
        if plain.count(0, end) != self.record_size - end:
            raise StreamError()
        return rtype, plain[FRAME_LEN:end]


#: Per raw type byte: (type, is final, least payload length, most payload length; -1 means
#: the record capacity). A token part must moreover be exactly full (checked in ``open``).
_OPEN_RULES: dict[int, tuple[RecordType, bool, int, int]] = {
    RecordType.TOKEN_PART.value: (RecordType.TOKEN_PART, False, 0, -1),
    RecordType.TOKEN_END.value: (RecordType.TOKEN_END, False, 1, -1),
    RecordType.COVER.value: (RecordType.COVER, False, 0, 0),
    RecordType.END.value: (RecordType.END, True, 0, 0),
    RecordType.ABORT.value: (RecordType.ABORT, True, 2, 2),
}
