"""The sealed manifest (format version 1): which files make up one version of one model.

The manifest is readable without the key (an operator sees model id, version, file names and
sizes) but authenticated with an HMAC under a subkey of the DEK, so nobody without the key can
add, drop or swap an entry. Each entry pins its file's header digest; every chunk's AAD carries
that digest, so the manifest transitively authenticates every byte of every file. Rollback is
stopped by the caller stating the model id and version it expects (and, from the key-release
policy, the manifest digest): an older manifest is authentic but names another version.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from sealing.errors import BindingError, DecryptionError, SealedFormatError, UnsupportedFormatError
from sealing.weights._format import (
    ALG_AES256GCM_HKDF_SHA256,
    FORMAT_VERSION,
    HEADER_FIXED_BYTES,
    HEADER_TAG_BYTES,
    MAX_CHUNK_LOG2,
    MAX_HEADER_BYTES,
    MAX_NAME_BYTES,
    MAX_PLAINTEXT_BYTES,
    MIN_CHUNK_LOG2,
    SALT_BYTES,
    FileKind,
    Reader,
    lp,
    sealed_body_length,
    validate_key_id,
    validate_model_id,
    validate_model_version,
    validate_name,
)
from sealing.weights._keys import Buffer, manifest_tag

MANIFEST_MAGIC = b"\x89LSM\r\n\x1a\n"
#: A model directory with more files than this is not a model (Llama-3.1-405B has 191 shards).
MAX_ENTRIES = 4096
MANIFEST_FIXED_BYTES = 64
ENTRY_FIXED_BYTES = 56  # after the name: kind, chunk_log2, 6 reserved, 2 x u64, digest
#: Upper bound on a valid manifest, so a reader never buffers more than this.
MAX_MANIFEST_BYTES = (
    MANIFEST_FIXED_BYTES
    + 2 * 258
    + MAX_ENTRIES * (2 + MAX_NAME_BYTES + ENTRY_FIXED_BYTES)
    + HEADER_TAG_BYTES
)
DIGEST_PREFIX = "sha256:"

_FIXED = struct.Struct(">8sHHIQI4s32s")
_ENTRY = struct.Struct(">BB6sQQ32s")
assert _FIXED.size == MANIFEST_FIXED_BYTES
assert _ENTRY.size == ENTRY_FIXED_BYTES


@dataclass(frozen=True)
class ManifestEntry:
    """One sealed file: ``header_digest`` is SHA-256 of its sealed header (tag included)."""

    name: str
    kind: FileKind
    chunk_log2: int
    plaintext_length: int
    sealed_length: int
    header_digest: bytes


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest. ``raw`` is the exact bytes (what ``digest`` and the tag cover).

    From ``parse_manifest`` this is only a claim; ``open_manifest`` returns it after the tag,
    the expected model id and version, and (if given) the pinned digest all checked.
    """

    raw: bytes
    model_id: str
    model_version: int
    key_id: str
    salt: bytes
    entries: tuple[ManifestEntry, ...]
    tag: bytes

    @property
    def digest(self) -> str:
        return manifest_digest(self.raw)

    def entry(self, name: str) -> ManifestEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise BindingError(f"{name!r} is not in the manifest", reason="manifest_mismatch")


def manifest_digest(data: bytes) -> str:
    """``sha256:<hex>`` of the manifest bytes: the value a key-release policy pins."""
    return DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


def encode_manifest(
    entries: Sequence[ManifestEntry],
    dek: Buffer,
    *,
    model_id: str,
    model_version: int,
    key_id: str,
    salt: bytes,
) -> bytes:
    """Canonical bytes: entries sorted by name (UTF-8 byte order), tag last."""
    if not 1 <= len(entries) <= MAX_ENTRIES:
        raise SealedFormatError(f"a manifest lists 1..{MAX_ENTRIES} files", field="entries")
    if len(salt) != SALT_BYTES:
        raise SealedFormatError("bad salt length", field="salt")
    ordered = sorted(entries, key=lambda e: e.name.encode())
    body = bytearray()
    for prev, e in zip([None, *ordered], ordered, strict=False):
        if prev is not None and prev.name == e.name:
            raise SealedFormatError(f"duplicate file {e.name!r}", field="entries")
        if len(e.header_digest) != 32:
            raise SealedFormatError("header digest must be 32 bytes", field="entries")
        body += lp(validate_name(e.name))
        body += _ENTRY.pack(
            int(FileKind(e.kind)),
            e.chunk_log2,
            bytes(6),
            e.plaintext_length,
            e.sealed_length,
            e.header_digest,
        )
    texts = lp(validate_model_id(model_id)) + lp(validate_key_id(key_id))
    total = MANIFEST_FIXED_BYTES + len(texts) + len(body) + HEADER_TAG_BYTES
    signed = (
        _FIXED.pack(
            MANIFEST_MAGIC,
            FORMAT_VERSION,
            ALG_AES256GCM_HKDF_SHA256,
            total,
            validate_model_version(model_version),
            len(ordered),
            bytes(4),
            salt,
        )
        + texts
        + bytes(body)
    )
    return signed + manifest_tag(dek, salt, signed)


def parse_manifest(data: bytes) -> Manifest:
    """Structural parse, no key: every length, reserved byte, bound and sort order."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise SealedFormatError(f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
    r = Reader(data)
    if r.take(8, "magic") != MANIFEST_MAGIC:
        raise SealedFormatError("not a lessee sealed manifest", offset=0, field="magic")
    r.pos = 0
    fixed = r.take(MANIFEST_FIXED_BYTES, "manifest header")
    (_, version, algorithm, total, model_version, count, reserved, salt) = _FIXED.unpack(fixed)
    if version != FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"manifest version {version} (this build reads {FORMAT_VERSION})",
            offset=8,
            field="format_version",
        )
    if algorithm != ALG_AES256GCM_HKDF_SHA256:
        raise UnsupportedFormatError(f"algorithm id {algorithm}", offset=10, field="algorithm")
    if total != len(data):
        raise SealedFormatError(
            f"manifest says {total} bytes, got {len(data)}", offset=12, field="length"
        )
    if not 1 <= count <= MAX_ENTRIES:
        raise SealedFormatError(f"{count} entries", offset=24, field="entry_count")
    if reserved != bytes(4):
        raise SealedFormatError("reserved bytes must be zero", offset=28, field="reserved")
    try:
        validate_model_version(model_version)
    except SealedFormatError as exc:
        raise SealedFormatError(
            "model version too large", offset=16, field="model_version"
        ) from exc
    r = Reader(data[: len(data) - HEADER_TAG_BYTES], MANIFEST_FIXED_BYTES)
    model_id, at = r.text("model_id")
    validate_model_id(model_id, offset=at)
    key_id, at = r.text("key_id")
    validate_key_id(key_id, offset=at)
    entries: list[ManifestEntry] = []
    previous: bytes | None = None
    for _ in range(count):
        name, at = r.text("entry name")
        validate_name(name, offset=at)
        if previous is not None and name.encode() <= previous:
            raise SealedFormatError("entries not strictly sorted by name", offset=at, field="name")
        previous = name.encode()
        at = r.pos
        kind, log2, res, pt_len, sealed_len, digest = _ENTRY.unpack(r.take(56, "entry"))
        try:
            file_kind = FileKind(kind)
        except ValueError as exc:
            raise SealedFormatError(f"unknown file kind {kind}", offset=at, field="kind") from exc
        if not MIN_CHUNK_LOG2 <= log2 <= MAX_CHUNK_LOG2:
            raise SealedFormatError(f"chunk size 2^{log2}", offset=at + 1, field="chunk_size")
        if res != bytes(6):
            raise SealedFormatError("reserved bytes must be zero", offset=at + 2, field="reserved")
        if pt_len > MAX_PLAINTEXT_BYTES:
            raise SealedFormatError("plaintext too large", offset=at + 8, field="plaintext_length")
        header_len = sealed_len - sealed_body_length(pt_len, 1 << log2)
        if not HEADER_FIXED_BYTES < header_len <= MAX_HEADER_BYTES:
            raise SealedFormatError(
                "sealed length does not fit its plaintext", offset=at + 16, field="sealed_length"
            )
        entries.append(
            ManifestEntry(
                name=name,
                kind=file_kind,
                chunk_log2=log2,
                plaintext_length=pt_len,
                sealed_length=sealed_len,
                header_digest=digest,
            )
        )
    if r.pos != len(data) - HEADER_TAG_BYTES:
        raise SealedFormatError("trailing bytes before the tag", offset=r.pos, field="manifest")
    return Manifest(
        raw=bytes(data),
        model_id=model_id,
        model_version=model_version,
        key_id=key_id,
        salt=salt,
        entries=tuple(entries),
        tag=bytes(data[-HEADER_TAG_BYTES:]),
    )


def open_manifest(
    data: bytes,
    dek: Buffer,
    *,
    model_id: str,
    model_version: int,
    manifest_digest: str | None = None,
) -> Manifest:
    """Parse, authenticate, and check that this is the model and version the caller expects.

    Order matters: the pinned digest (if any) first (no key needed, and it is the strongest
    statement), then the tag (opaque ``DecryptionError``), then the claims (``BindingError``,
    which is safe to make specific because the claims are now known to be genuine).
    """
    m = parse_manifest(data)
    if manifest_digest is not None and not hmac.compare_digest(
        m.digest.encode(), manifest_digest.strip().lower().encode()
    ):
        raise BindingError(
            f"manifest digest {m.digest} is not the pinned {manifest_digest}",
            reason="manifest_digest_mismatch",
        )
    signed = m.raw[:-HEADER_TAG_BYTES]
    if not hmac.compare_digest(manifest_tag(dek, m.salt, signed), m.tag):
        raise DecryptionError
    if m.model_id != model_id:
        raise BindingError(
            f"manifest is for model {m.model_id!r}, expected {model_id!r}", reason="model_mismatch"
        )
    if m.model_version != model_version:
        raise BindingError(
            f"manifest is version {m.model_version} of {m.model_id!r}, expected {model_version}",
            reason="version_mismatch",
        )
    return m
