"""Subkeys from the model's data key (DEK), by HKDF-SHA256 (RFC 5869).

The DEK never encrypts anything itself. Each sealed file gets its own chunk key and header-MAC
key from HKDF with that file's random 256-bit salt, so chunks of one file are undecryptable under
another file's key even when both were sealed with the same DEK (the splice and move attacks),
and nonces (which are just chunk indices) never repeat under one key. The manifest gets its own
MAC key the same way. Distinct ``info`` labels keep the three uses apart.

Intermediate key bytes are derived into ``bytearray``s and zeroed as soon as the AES/HMAC object
holds them (``cryptography`` keeps its own copy inside OpenSSL, which we cannot reach).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from attest.errors import InputError
from sealing.errors import DecryptionError
from sealing.weights._format import HEADER_TAG_BYTES, SALT_BYTES

#: What a data key may be passed as (a bytearray can be wiped by the caller afterwards).
Buffer = bytes | bytearray | memoryview

DEK_BYTES = 32  # AES-256 strength; the broker stores and releases exactly this many bytes
_FILE_INFO = b"lessee/sealed-weights/v1/file"
_MANIFEST_INFO = b"lessee/sealed-weights/v1/manifest"
_KEY_ID_INFO = b"lessee/sealed-weights/v1/key-id"
KEY_ID_PREFIX = "lsw1-"


def check_dek(dek: Buffer) -> memoryview:
    view = memoryview(dek).cast("B")
    if view.nbytes != DEK_BYTES:
        raise InputError(f"the data key must be {DEK_BYTES} bytes")
    return view


def _hkdf_into(dek: Buffer, salt: bytes, info: bytes, out: bytearray) -> None:
    HKDF(algorithm=hashes.SHA256(), length=len(out), salt=salt, info=info).derive_into(
        check_dek(dek), out
    )


#: Bytes zeroed per copy when wiping. One block of zeros is allocated once and reused: a fresh
#: ``bytes(n)`` per wipe cost a 1 MiB allocation (mmap, page faults, munmap) for every 1 MiB
#: chunk wiped, several times the cost of the copy itself.
WIPE_BLOCK_BYTES = 1 << 20
_ZEROS = memoryview(bytes(WIPE_BLOCK_BYTES))


def wipe(buf: bytearray | memoryview) -> None:
    """Best-effort zeroing of a mutable buffer that held key material or plaintext."""
    view = memoryview(buf).cast("B")
    n = view.nbytes
    for off in range(0, n, WIPE_BLOCK_BYTES):
        end = min(n, off + WIPE_BLOCK_BYTES)
        view[off:end] = _ZEROS[: end - off]


@dataclass(frozen=True)
class FileKeys:
    """The two per-file subkeys. ``mac_key`` is kept so the header can be re-checked."""

    aead: AESGCM
    _mac: hmac.HMAC  # keyed prototype; copied per use so the raw key bytes are not kept

    def header_tag(self, signed_part: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(signed_part)
        return mac.digest()

    def verify_header(self, signed_part: bytes, tag: bytes) -> None:
        if len(tag) != HEADER_TAG_BYTES or not hmac.compare_digest(
            self.header_tag(signed_part), tag
        ):
            raise DecryptionError


def file_keys(dek: Buffer, salt: bytes) -> FileKeys:
    if len(salt) != SALT_BYTES:
        raise ValueError("bad salt length")
    okm = bytearray(64)
    try:
        _hkdf_into(dek, salt, _FILE_INFO, okm)
        mac_key = okm[32:]
        try:
            aead = AESGCM(memoryview(okm)[:32])
            return FileKeys(aead=aead, _mac=hmac.new(mac_key, digestmod=hashlib.sha256))
        finally:
            wipe(mac_key)
    finally:
        wipe(okm)


def manifest_tag(dek: Buffer, salt: bytes, signed_part: bytes) -> bytes:
    okm = bytearray(32)
    try:
        _hkdf_into(dek, salt, _MANIFEST_INFO, okm)
        return hmac.new(okm, signed_part, hashlib.sha256).digest()
    finally:
        wipe(okm)


def key_fingerprint(dek: Buffer) -> str:
    """A public, one-way label of a DEK (HKDF output, so it reveals nothing about the key).

    Used as the default key id so an operator can tell which key a sealed model needs and a
    key store can index it; it is a label only and is never trusted for authentication.
    """
    okm = bytearray(16)
    _hkdf_into(dek, b"", _KEY_ID_INFO, okm)
    return KEY_ID_PREFIX + okm.hex()
