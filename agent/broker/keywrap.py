"""Data keys at rest: wrapped under the broker's master key with AES-256-GCM.

The AAD binds each wrapped key to its key id and model id, so a wrapped key copied onto another
row of the database does not unwrap there. The master key never leaves this module's objects;
it is read from a file that only the broker's user can read (created 0600 on first use).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from attest.errors import InputError, VerificationError

MASTER_KEY_BYTES = 32
DATA_KEY_BYTES = 32
_NONCE_BYTES = 12
_VERSION = b"\x01"


class UnwrapError(VerificationError):
    """A wrapped key failed authentication (wrong master key, or moved/tampered row)."""


class KeyWrapper:
    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != MASTER_KEY_BYTES:
            raise InputError(f"master key must be {MASTER_KEY_BYTES} bytes")
        self._aead = AESGCM(master_key)

    @staticmethod
    def _aad(key_id: str, model_id: str) -> bytes:
        k, m = key_id.encode(), model_id.encode()
        return (
            b"lessee/v1/wrapped-data-key"
            + len(k).to_bytes(2, "big")
            + k
            + len(m).to_bytes(2, "big")
            + m
        )

    def wrap(self, data_key: bytes, *, key_id: str, model_id: str) -> bytes:
        if len(data_key) != DATA_KEY_BYTES:
            raise InputError(f"data key must be {DATA_KEY_BYTES} bytes")
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, data_key, self._aad(key_id, model_id))

    def unwrap(self, blob: bytes, *, key_id: str, model_id: str) -> bytes:
        if len(blob) != 1 + _NONCE_BYTES + DATA_KEY_BYTES + 16 or blob[:1] != _VERSION:
            raise UnwrapError("wrapped key has the wrong format", reason="unwrap")
        try:
            return self._aead.decrypt(blob[1:13], blob[13:], self._aad(key_id, model_id))
        except InvalidTag:
            raise UnwrapError("wrapped key does not authenticate", reason="unwrap") from None


def load_or_create_master_key(path: Path) -> bytes:
    """Read the master key file, creating it (0600, 32 random bytes) if it does not exist.

    Refuses a file that others can read: a master key readable by the group or world is a leak.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InputError(
                f"{path}: master key file must not be accessible by group/others (chmod 600)"
            ) from None
        key = path.read_bytes()
        if len(key) != MASTER_KEY_BYTES:
            raise InputError(
                f"{path}: master key file must hold exactly {MASTER_KEY_BYTES} bytes"
            ) from None
        return key
    key = secrets.token_bytes(MASTER_KEY_BYTES)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    return key
