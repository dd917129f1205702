"""Token-stream requests: a prompt HPKE-sealed to the attested enclave key.

The client draws a fresh 32-byte *request secret*, puts it in front of the prompt and the
generation parameters, pads the plaintext to a multiple of a block (so the relay learns the
prompt length only to that granularity), and seals it in RFC 9180 base mode to the enclave key of
a verified bundle. The HPKE ``info`` names the protocol version, the suite and the key id, so a
request can be opened only by that key, for this protocol, under this version.

The request secret is what makes the response keys unusable for anyone but the client: the
enclave derives them from the secret and its own fresh response nonce (see ``response.py``).

Version 2 adds the client's clock: ``sent_at``, POSIX seconds when the request was sealed,
inside the ciphertext (so the relay can neither read nor change it). With the request id (a
digest of the HPKE ``enc``, unique per seal), it lets the enclave refuse a replayed request
(``replay.py``): the pattern of TLS 1.3 0-RTT anti-replay (RFC 8446 section 8) and OHTTP's
date-based anti-replay (RFC 9458 section 6.5). Version 1 carries no time, so its replay cannot be
refused: it is no longer accepted.

Wire format v2::

    version u8 = 2 | suite u8 | key_id [32] | enc [Nenc] | ct [len(plaintext) + 16]

Plaintext v2::

    request_secret [32] | sent_at u64 | record_size u16 | max_new_tokens u32
    | temperature_milli u16 | top_p_milli u16 | prompt_len u32 | prompt (UTF-8) [prompt_len]
    | zero padding
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field

from attest.errors import InputError, ParseError, VerificationError
from sealing import hpke_suite
from sealing.hpke_suite import (
    AEAD_TAG_LEN,
    SUITE_PARAMS,
    HpkeOpenError,
    HpkePrivateKey,
    HpkePublicKey,
    Rng,
    SuiteId,
    parse_suite_id,
)
from sealing.stream.errors import StreamError

VERSION = 2
#: Version 1 (no ``sent_at``): refused with its own message, so an old client learns why.
VERSION_1 = 1
#: Domain-separation label of the request's HPKE info (followed by 0x00 and the header). It names
#: the token-stream protocol; the request version is in the header, which the info carries too.
REQUEST_INFO_LABEL = b"lessee token-stream v1 request"
KEY_ID_LEN = 32
HEADER_LEN = 1 + 1 + KEY_ID_LEN
REQUEST_SECRET_LEN = 32
#: Length of the request id: SHA-256 of the HPKE ``enc`` (see :func:`request_id`).
REQUEST_ID_LEN = 32
#: ``sent_at`` is a u64 of POSIX seconds.
MAX_SENT_AT = (1 << 64) - 1
_PARAMS = struct.Struct(">QHIHHI")
#: Offset of ``record_size`` in the plaintext (after the secret and ``sent_at``).
_RECORD_SIZE_OFFSET = REQUEST_SECRET_LEN + 8
#: Fixed part of the plaintext: secret, sent_at, record_size, max_new_tokens, temperature, top_p,
#: prompt_len.
PLAINTEXT_FIXED_LEN = REQUEST_SECRET_LEN + _PARAMS.size

#: Largest request plaintext (prompt + padding). 1 MiB holds a prompt of ~250k tokens, beyond
#: any context window served here, and bounds the enclave's decryption work per request.
MAX_REQUEST_PLAINTEXT = 1024 * 1024
MAX_PROMPT_LEN = MAX_REQUEST_PLAINTEXT - PLAINTEXT_FIXED_LEN
#: Default padding block: the relay learns the prompt length to within 512 bytes (about 120
#: tokens of English) instead of exactly. A block of 1 turns padding off.
DEFAULT_REQUEST_PAD_BLOCK = 512

#: Record plaintext size bounds. 16 bytes leave 13 for a token (most tokens are shorter); 16 KiB
#: is TLS's record plaintext limit and far above any token.
MIN_RECORD_SIZE = 16
MAX_RECORD_SIZE = 16 * 1024
#: Default record plaintext size (the padding bucket): 3 bytes of framing + 29 bytes of token,
#: so every token of up to 29 UTF-8 bytes fits one record of 1 + 32 + 16 = 49 bytes on the wire.
DEFAULT_RECORD_SIZE = 32

#: Generation parameter bounds (the enclave refuses anything outside them).
MAX_NEW_TOKENS = 1 << 20
MAX_TEMPERATURE_MILLI = 10_000
MAX_TOP_P_MILLI = 1000


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters carried inside the encrypted request (the relay never sees them).

    Integers in thousandths rather than floats: the encoding is exact and canonical.
    """

    max_new_tokens: int = 256
    temperature_milli: int = 1000
    top_p_milli: int = 1000

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise InputError(f"max_new_tokens must be 1..{MAX_NEW_TOKENS}")
        if not 0 <= self.temperature_milli <= MAX_TEMPERATURE_MILLI:
            raise InputError(f"temperature_milli must be 0..{MAX_TEMPERATURE_MILLI}")
        if not 1 <= self.top_p_milli <= MAX_TOP_P_MILLI:
            raise InputError(f"top_p_milli must be 1..{MAX_TOP_P_MILLI}")


def request_header(suite: SuiteId, key_id: bytes) -> bytes:
    """``version || suite || key_id``: the request's clear header."""
    return bytes([VERSION, suite]) + key_id


def request_info(header: bytes) -> bytes:
    """The HPKE info: label, a zero byte, then the header (version, suite, key id)."""
    return REQUEST_INFO_LABEL + b"\x00" + header


def request_id(enc: bytes) -> bytes:
    """The id under which the enclave remembers a request: SHA-256 of its HPKE ``enc``.

    ``enc`` is the encapsulation of a fresh ephemeral key, so it is unique per seal, and it is
    bound into the HPKE key schedule (DHKEM's ``kem_context``, X-Wing's combiner and ML-KEM's
    re-encryption check), so a relay that changes it makes the request fail to open. A digest
    rather than ``enc`` itself: 32 bytes per entry whatever the suite (X-Wing's ``enc`` is 1120).
    """
    return hashlib.sha256(enc).digest()


@dataclass(frozen=True)
class SealedRequest:
    """What the client keeps after sealing: the wire bytes, and the secret and ``enc`` it needs
    to derive the response keys. ``request_secret`` is never printed."""

    wire: bytes = field(repr=False)
    enc: bytes = field(repr=False)
    request_secret: bytes = field(repr=False)
    record_size: int
    sent_at: int


def _prompt_bytes(prompt: str) -> bytes:
    """The prompt as strict UTF-8. The error is raised outside the ``except`` block, so it
    carries no ``UnicodeEncodeError`` (whose ``.object`` is the prompt) as cause or context."""
    if not isinstance(prompt, str):
        raise InputError("prompt must be text")
    body: bytes | None
    try:
        body = prompt.encode("utf-8")
    except UnicodeEncodeError:
        body = None
    if body is None:
        raise InputError(
            "prompt is not valid text: it holds a lone surrogate (undecodable bytes); "
            "pass it as UTF-8"
        )
    return body


def seal_request(
    public_key: HpkePublicKey,
    prompt: str,
    *,
    sent_at: int,
    params: GenerationParams | None = None,
    record_size: int = DEFAULT_RECORD_SIZE,
    pad_block: int = DEFAULT_REQUEST_PAD_BLOCK,
    rng: Rng = os.urandom,
) -> SealedRequest:
    """Seal ``prompt`` to ``public_key``, stamped ``sent_at`` (POSIX seconds of the client's
    clock: the caller reads its clock, this module has none). Callers use
    :class:`~sealing.stream.session.ClientStream`, which passes a *verified* bundle's key; this
    function is the format itself.

    A prompt that is not text, or holds a lone surrogate (what Python makes of undecodable
    bytes in argv, e.g. ``lessee client generate --prompt``), is an ``InputError`` that neither
    quotes nor chains it: ``UnicodeEncodeError.object`` would be the whole prompt."""
    params = params or GenerationParams()
    if isinstance(sent_at, bool) or not isinstance(sent_at, int) or not 0 <= sent_at <= MAX_SENT_AT:
        raise InputError("sent_at must be an integer of POSIX seconds, 0..2^64-1")
    if not MIN_RECORD_SIZE <= record_size <= MAX_RECORD_SIZE:
        raise InputError(f"record_size must be {MIN_RECORD_SIZE}..{MAX_RECORD_SIZE}")
    if not 1 <= pad_block <= MAX_REQUEST_PLAINTEXT:
        raise InputError(f"pad_block must be 1..{MAX_REQUEST_PLAINTEXT}")
    body = _prompt_bytes(prompt)
    if len(body) > MAX_PROMPT_LEN:
        raise InputError(f"prompt is {len(body)} bytes, the bound is {MAX_PROMPT_LEN}")
    secret = rng(REQUEST_SECRET_LEN)
    if len(secret) != REQUEST_SECRET_LEN:
        raise ValueError("rng returned the wrong number of bytes")
    plain = (
        secret
        + _PARAMS.pack(
            sent_at,
            record_size,
            params.max_new_tokens,
            params.temperature_milli,
            params.top_p_milli,
            len(body),
        )
        + body
    )
    padded_len = min(-(-len(plain) // pad_block) * pad_block, MAX_REQUEST_PLAINTEXT)
    plain += bytes(padded_len - len(plain))
    header = request_header(public_key.suite, public_key.key_id)
    blob = hpke_suite.seal(public_key, request_info(header), b"", plain)
    enc_len = SUITE_PARAMS[public_key.suite].enc_len
    return SealedRequest(header + blob, blob[:enc_len], secret, record_size, sent_at)


@dataclass(frozen=True)
class StreamRequest:
    """A request opened by the enclave. ``raw`` is the wire bytes; the secret is kept apart.

    ``sent_at`` is the client's claim of when it sealed the request, authenticated (inside the
    ciphertext) but not checked here: the replay guard judges it against the enclave's clock.
    """

    suite: SuiteId
    key_id: bytes
    enc: bytes = field(repr=False)
    prompt: str = field(repr=False)
    params: GenerationParams
    record_size: int
    raw: bytes = field(repr=False)
    request_secret: bytes = field(repr=False)
    sent_at: int

    @property
    def request_id(self) -> bytes:
        """SHA-256 of ``enc``: what the enclave's replay guard remembers (:func:`request_id`)."""
        return request_id(self.enc)


def parse_request_header(data: bytes) -> tuple[SuiteId, bytes]:
    """Check the clear header and total length of a request; return (suite, key_id)."""
    if len(data) < HEADER_LEN:
        raise ParseError("request truncated", offset=len(data), field="header")
    if data[0] == VERSION_1:
        raise ParseError(
            "request version 1 carries no send time, so its replay cannot be refused; "
            "the enclave takes version 2 only (upgrade the client)",
            offset=0,
            field="version",
        )
    if data[0] != VERSION:
        raise ParseError(f"unsupported request version {data[0]}", offset=0, field="version")
    suite = parse_suite_id(data[1], offset=1)
    params = SUITE_PARAMS[suite]
    min_len = HEADER_LEN + params.enc_len + PLAINTEXT_FIXED_LEN + AEAD_TAG_LEN
    max_len = HEADER_LEN + params.enc_len + MAX_REQUEST_PLAINTEXT + AEAD_TAG_LEN
    if not min_len <= len(data) <= max_len:
        raise ParseError(
            f"request is {len(data)} bytes, suite needs {min_len}..{max_len}",
            offset=0,
            field="length",
        )
    return suite, data[2:HEADER_LEN]


def open_request(private_key: HpkePrivateKey, data: bytes) -> StreamRequest:
    """Open a request on the enclave side.

    Header problems are ``ParseError``; a key id that is not this key's is a
    ``VerificationError`` (``unknown_key``); a ciphertext that does not open is the opaque
    :class:`StreamError`; a plaintext that opens but breaks the format (reserved padding not
    zero, bad UTF-8, parameters out of range) is ``ParseError`` again: anyone holding the public
    key can produce it, so it is malformed input, not an attack on the stream.
    """
    data = bytes(data)
    suite, key_id = parse_request_header(data)
    if suite is not private_key.suite or key_id != private_key.public_key.key_id:
        raise VerificationError("request is for another key", reason="unknown_key")
    header = data[:HEADER_LEN]
    blob = data[HEADER_LEN:]
    try:
        plain = hpke_suite.open(private_key, request_info(header), b"", blob)
    except HpkeOpenError:
        raise StreamError() from None
    secret = plain[:REQUEST_SECRET_LEN]
    sent_at, record_size, max_new, temp, top_p, prompt_len = _PARAMS.unpack_from(
        plain, REQUEST_SECRET_LEN
    )
    if not MIN_RECORD_SIZE <= record_size <= MAX_RECORD_SIZE:
        raise ParseError(
            f"record_size {record_size} out of bounds",
            offset=_RECORD_SIZE_OFFSET,
            field="record_size",
        )
    end = PLAINTEXT_FIXED_LEN + prompt_len
    if end > len(plain):
        raise ParseError(
            "prompt_len beyond the plaintext", offset=PLAINTEXT_FIXED_LEN - 4, field="prompt_len"
        )
    if any(plain[end:]):
        raise ParseError("request padding is not zero", offset=end, field="padding")
    try:
        prompt = plain[PLAINTEXT_FIXED_LEN:end].decode("utf-8")
        params = GenerationParams(max_new, temp, top_p)
    except UnicodeDecodeError:
        raise ParseError(
            "prompt is not UTF-8", offset=PLAINTEXT_FIXED_LEN, field="prompt"
        ) from None
    except InputError as exc:
        raise ParseError(str(exc), offset=_RECORD_SIZE_OFFSET + 2, field="params") from None
    return StreamRequest(
        suite=suite,
        key_id=key_id,
        enc=blob[: SUITE_PARAMS[suite].enc_len],
        prompt=prompt,
        params=params,
        record_size=record_size,
        raw=data,
        request_secret=secret,
        sent_at=sent_at,
    )
