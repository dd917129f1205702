"""Byte layout of a sealed file's header (format version 1); see docs/formats/sealed-weights.md.

Everything here is structural and needs no key: parsing checks magic, version, algorithm,
lengths, reserved bytes and the text fields, and keeps the original bytes. Authentication of the
header (its HMAC tag) happens in ``_keys``/``recipes`` once the data key is known.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass

from sealing.errors import SealedFormatError, UnsupportedFormatError

#: PNG-style magic: a high byte (catches 7-bit channels), letters, CR LF (catches newline
#: translation), ^Z and LF. "LSW" = lessee sealed weights.
SHARD_MAGIC = b"\x89LSW\r\n\x1a\n"
FORMAT_VERSION = 1
#: Algorithm 1: HKDF-SHA256 subkeys, HMAC-SHA256 header tag, AES-256-GCM chunks (96-bit nonce
#: from the chunk index, 128-bit tag), final-chunk flag in the AAD.
ALG_AES256GCM_HKDF_SHA256 = 1

TAG_BYTES = 16  # AES-GCM tag appended to every chunk
HEADER_TAG_BYTES = 32  # HMAC-SHA256
SALT_BYTES = 32  # per-file HKDF salt; 256 bits so two files never share a subkey
#: Fixed part before the variable-length text fields (see the table in the format doc).
HEADER_FIXED_BYTES = 72

#: Chunk sizes are powers of two between 4 KiB (tag overhead 0.4%) and 64 MiB (bounds the
#: scratch buffer each decrypting thread holds). Stored as the exponent so it cannot be odd.
MIN_CHUNK_LOG2 = 12
MAX_CHUNK_LOG2 = 26
DEFAULT_CHUNK_LOG2 = 20  # 1 MiB: large enough for full AES-GCM speed, small for lazy loads
#: Largest plaintext per file: 1 TiB. Real safetensors shards are 2-10 GB; this bounds the
#: chunk count (2^28 at 4 KiB chunks) far below the 2^64 nonce space.
MAX_PLAINTEXT_BYTES = 1 << 40
#: model id: a lab's label such as "acme/llama-3-70b-instruct"; 256 bytes is ample.
MAX_MODEL_ID_BYTES = 256
#: file names: the common file-system limit (NAME_MAX) of 255 bytes.
MAX_NAME_BYTES = 255
#: key ids are printable ASCII labels for the broker's key store.
MAX_KEY_ID_BYTES = 128
#: Model versions are u64 fields in the header and manifest, but capped at 2^32 - 1: key
#: release binds the version as 4 bytes (``sealing.keyrelease.release_info``) and the broker
#: and its protocol carry a u32, so a model sealed with a larger version could never be
#: released. Refusing it here (and in ``lessee seal``) fails at sealing time, not in the field.
MAX_MODEL_VERSION = (1 << 32) - 1
#: The largest header that can be valid: fixed part, three length-prefixed fields, tag.
MAX_HEADER_BYTES = (
    HEADER_FIXED_BYTES
    + 2
    + MAX_MODEL_ID_BYTES
    + 2
    + MAX_NAME_BYTES
    + 2
    + MAX_KEY_ID_BYTES
    + HEADER_TAG_BYTES
)

_FIXED = struct.Struct(">8sHHIBB6sQQ32s")
assert _FIXED.size == HEADER_FIXED_BYTES


class FileKind(enum.IntEnum):
    """What the plaintext of a sealed file is; the loader treats each kind differently."""

    SAFETENSORS = 1  # a safetensors shard (validated strictly before sealing and after opening)
    INDEX = 2  # model.safetensors.index.json: tensor names are secret, so it is sealed too
    OTHER = 3  # any other file of the model directory (config.json, tokenizer files), opaque


def validate_model_id(value: str, *, offset: int | None = None) -> bytes:
    """UTF-8 text without control characters; returns its encoding."""
    return _text(value, field="model_id", max_bytes=MAX_MODEL_ID_BYTES, offset=offset)


def validate_key_id(value: str, *, offset: int | None = None) -> bytes:
    """Printable ASCII only: key ids end up in SQL rows, log lines and file names."""
    raw = _text(value, field="key_id", max_bytes=MAX_KEY_ID_BYTES, offset=offset)
    if not all(0x21 <= b <= 0x7E for b in raw):
        raise SealedFormatError(
            "key id must be printable ASCII without spaces", offset=offset, field="key_id"
        )
    return raw


def validate_name(value: str, *, offset: int | None = None) -> bytes:
    """A plain file name: no separators, no leading dot (so never '.', '..' or hidden)."""
    raw = _text(value, field="name", max_bytes=MAX_NAME_BYTES, offset=offset)
    if "/" in value or "\\" in value or value.startswith("."):
        raise SealedFormatError(f"not a plain file name: {value!r}", offset=offset, field="name")
    return raw


def validate_model_version(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MODEL_VERSION:
        raise SealedFormatError(
            f"model version must be an integer in 0..{MAX_MODEL_VERSION}", field="model_version"
        )
    return value


def _text(value: str, *, field: str, max_bytes: int, offset: int | None) -> bytes:
    if not isinstance(value, str):
        raise SealedFormatError("must be text", offset=offset, field=field)
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SealedFormatError("not encodable as UTF-8", offset=offset, field=field) from exc
    if not 1 <= len(raw) <= max_bytes:
        raise SealedFormatError(f"length must be 1..{max_bytes} bytes", offset=offset, field=field)
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
        raise SealedFormatError("control characters are not allowed", offset=offset, field=field)
    return raw


class Reader:
    """Bounds-checked cursor over bytes; every read names its field for the error."""

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data = data
        self.pos = offset

    def take(self, n: int, field: str) -> bytes:
        if self.pos + n > len(self.data):
            raise SealedFormatError("truncated", offset=self.pos, field=field)
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u64(self, field: str) -> int:
        return int.from_bytes(self.take(8, field), "big")

    def text(self, field: str) -> tuple[str, int]:
        """A u16-length-prefixed UTF-8 string; returns (text, offset of the length field)."""
        at = self.pos
        n = int.from_bytes(self.take(2, field), "big")
        raw = self.take(n, field)
        try:
            return raw.decode("utf-8"), at
        except UnicodeDecodeError as exc:
            raise SealedFormatError("not UTF-8", offset=at, field=field) from exc


def lp(raw: bytes) -> bytes:
    """u16 big-endian length prefix."""
    return len(raw).to_bytes(2, "big") + raw


def chunk_count(plaintext_length: int, chunk_size: int) -> int:
    """Chunks in a file: at least one (an empty file still has an authenticated final chunk)."""
    return max(1, -(-plaintext_length // chunk_size))


def sealed_body_length(plaintext_length: int, chunk_size: int) -> int:
    return plaintext_length + chunk_count(plaintext_length, chunk_size) * TAG_BYTES


@dataclass(frozen=True)
class ShardHeader:
    """A parsed sealed-file header. ``raw`` is the exact header bytes, tag included.

    Parsing does not authenticate: a ``ShardHeader`` from ``parse_shard_header`` is what the
    file *claims*. ``recipes.open_shard`` verifies the tag before trusting any field.
    """

    raw: bytes
    format_version: int
    algorithm: int
    kind: FileKind
    chunk_log2: int
    plaintext_length: int
    model_version: int
    salt: bytes
    model_id: str
    name: str
    key_id: str
    tag: bytes

    @property
    def header_length(self) -> int:
        return len(self.raw)

    @property
    def chunk_size(self) -> int:
        return 1 << self.chunk_log2

    @property
    def chunk_count(self) -> int:
        return chunk_count(self.plaintext_length, self.chunk_size)

    @property
    def sealed_length(self) -> int:
        """Exact size of the whole sealed file; anything else is truncation or appended data."""
        return self.header_length + sealed_body_length(self.plaintext_length, self.chunk_size)

    @property
    def digest(self) -> bytes:
        """SHA-256 of the header (tag included): what the manifest pins and every chunk's AAD
        carries, so a chunk cannot be moved to a file with any other header."""
        return hashlib.sha256(self.raw).digest()

    @property
    def signed_part(self) -> bytes:
        return self.raw[:-HEADER_TAG_BYTES]


def encode_header_body(
    *,
    kind: FileKind,
    chunk_log2: int,
    plaintext_length: int,
    model_version: int,
    salt: bytes,
    model_id: str,
    name: str,
    key_id: str,
) -> bytes:
    """The header without its tag (the part the tag covers)."""
    if not MIN_CHUNK_LOG2 <= chunk_log2 <= MAX_CHUNK_LOG2:
        raise SealedFormatError(
            f"chunk size must be 2^{MIN_CHUNK_LOG2}..2^{MAX_CHUNK_LOG2}", field="chunk_size"
        )
    if not 0 <= plaintext_length <= MAX_PLAINTEXT_BYTES:
        raise SealedFormatError(
            f"plaintext larger than {MAX_PLAINTEXT_BYTES} bytes", field="plaintext_length"
        )
    if len(salt) != SALT_BYTES:
        raise SealedFormatError(f"salt must be {SALT_BYTES} bytes", field="salt")
    texts = lp(validate_model_id(model_id)) + lp(validate_name(name)) + lp(validate_key_id(key_id))
    header_length = HEADER_FIXED_BYTES + len(texts) + HEADER_TAG_BYTES
    fixed = _FIXED.pack(
        SHARD_MAGIC,
        FORMAT_VERSION,
        ALG_AES256GCM_HKDF_SHA256,
        header_length,
        int(FileKind(kind)),
        chunk_log2,
        bytes(6),
        plaintext_length,
        validate_model_version(model_version),
        salt,
    )
    return fixed + texts


def peek_header_length(prefix: bytes) -> int:
    """From the first 16 bytes, the total header length (checked against the bound)."""
    r = Reader(prefix)
    if r.take(8, "magic") != SHARD_MAGIC:
        raise SealedFormatError("not a lessee sealed file", offset=0, field="magic")
    version = int.from_bytes(r.take(2, "format_version"), "big")
    if version != FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"sealed format version {version} (this build reads {FORMAT_VERSION})",
            offset=8,
            field="format_version",
        )
    algorithm = int.from_bytes(r.take(2, "algorithm"), "big")
    if algorithm != ALG_AES256GCM_HKDF_SHA256:
        raise UnsupportedFormatError(f"algorithm id {algorithm}", offset=10, field="algorithm")
    length = int.from_bytes(r.take(4, "header_length"), "big")
    if not HEADER_FIXED_BYTES + 6 + HEADER_TAG_BYTES <= length <= MAX_HEADER_BYTES:
        raise SealedFormatError(f"header length {length}", offset=12, field="header_length")
    return length


def parse_shard_header(data: bytes) -> ShardHeader:
    """Parse exactly one header (``data`` must be the header and nothing else)."""
    length = peek_header_length(data[:16])
    if len(data) != length:
        raise SealedFormatError(
            f"header is {length} bytes, got {len(data)}", offset=12, field="header_length"
        )
    (_, version, algorithm, _, kind, chunk_log2, reserved, pt_len, model_version, salt) = (
        _FIXED.unpack_from(data)
    )
    try:
        file_kind = FileKind(kind)
    except ValueError as exc:
        raise SealedFormatError(f"unknown file kind {kind}", offset=16, field="kind") from exc
    if not MIN_CHUNK_LOG2 <= chunk_log2 <= MAX_CHUNK_LOG2:
        raise SealedFormatError(f"chunk size 2^{chunk_log2}", offset=17, field="chunk_size")
    if reserved != bytes(6):
        raise SealedFormatError("reserved bytes must be zero", offset=18, field="reserved")
    if pt_len > MAX_PLAINTEXT_BYTES:
        raise SealedFormatError(f"plaintext length {pt_len}", offset=24, field="plaintext_length")
    if model_version > MAX_MODEL_VERSION:
        raise SealedFormatError("model version too large", offset=32, field="model_version")
    r = Reader(data[: length - HEADER_TAG_BYTES], HEADER_FIXED_BYTES)
    model_id, at_model = r.text("model_id")
    name, at_name = r.text("name")
    key_id, at_key = r.text("key_id")
    if r.pos != length - HEADER_TAG_BYTES:
        raise SealedFormatError("trailing bytes before the tag", offset=r.pos, field="header")
    validate_model_id(model_id, offset=at_model)
    validate_name(name, offset=at_name)
    validate_key_id(key_id, offset=at_key)
    return ShardHeader(
        raw=bytes(data),
        format_version=version,
        algorithm=algorithm,
        kind=file_kind,
        chunk_log2=chunk_log2,
        plaintext_length=pt_len,
        model_version=model_version,
        salt=salt,
        model_id=model_id,
        name=name,
        key_id=key_id,
        tag=bytes(data[-HEADER_TAG_BYTES:]),
    )
