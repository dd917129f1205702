"""Data keys at rest: wrapped under the broker's master key with AES-256-GCM.

The AAD binds each wrapped key to its key id and model id, so a wrapped key copied onto another
row of the database does not unwrap there. Format 2 (every key wrapped now) also binds a
``context``: the broker passes what else the model's row decides a release by -- the model
version, the policy text's SHA-256 and its digest, the sealed manifest's digest -- so a row whose
policy was changed in the database without the master key (the database file alone was
writable) no longer unwraps: the appraisal may run under the changed policy, but no key is
released by it. Format 1 (no context) is read only when the broker is told so
(``allow_format_1``, ``lessee broker serve --allow-wrap-format-1``): the format byte lies in the
database itself, so a format-1 blob saved from an older row (a backup) could otherwise be put back
beside any policy, even after the model was registered again in format 2.

The master key never leaves this module's objects; it is read from a file that only the
broker's user can read (created 0600 on first use).
"""

from __future__ import annotations

import hashlib
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
_VERSION_1 = b"\x01"
_VERSION_2 = b"\x02"
_WRAPPED_LEN = 1 + _NONCE_BYTES + DATA_KEY_BYTES + 16


class UnwrapError(VerificationError):
    """A wrapped key failed authentication (wrong master key, or moved/tampered row)."""


class KeyWrapper:
    def __init__(self, master_key: bytes, *, allow_format_1: bool = False) -> None:
        if len(master_key) != MASTER_KEY_BYTES:
            raise InputError(f"master key must be {MASTER_KEY_BYTES} bytes")
        self._aead = AESGCM(master_key)
        self.allow_format_1 = allow_format_1

    @staticmethod
    def _aad(key_id: str, model_id: str, context: bytes | None = None) -> bytes:
        k, m = key_id.encode(), model_id.encode()
        ids = len(k).to_bytes(2, "big") + k + len(m).to_bytes(2, "big") + m
        if context is None:
            return b"lessee/v1/wrapped-data-key" + ids
        return b"lessee/v2/wrapped-data-key" + ids + len(context).to_bytes(4, "big") + context

    def wrap(self, data_key: bytes, *, key_id: str, model_id: str, context: bytes) -> bytes:
        """Format 2: the key bound to its ids and ``context`` (see the module docstring)."""
        if len(data_key) != DATA_KEY_BYTES:
            raise InputError(f"data key must be {DATA_KEY_BYTES} bytes")
        nonce = secrets.token_bytes(_NONCE_BYTES)
        aad = self._aad(key_id, model_id, context)
        return _VERSION_2 + nonce + self._aead.encrypt(nonce, data_key, aad)

    def unwrap(self, blob: bytes, *, key_id: str, model_id: str, context: bytes) -> bytes:
        """The data key, if ``blob`` authenticates for these ids and, in format 2, this
        ``context`` (a format-1 blob binds none, is read only with ``allow_format_1``, and
        ``context`` is not checked for it)."""
        if len(blob) != _WRAPPED_LEN or blob[:1] not in (_VERSION_1, _VERSION_2):
            raise UnwrapError("wrapped key has the wrong format", reason="unwrap")
        if blob[:1] == _VERSION_1 and not self.allow_format_1:
            raise UnwrapError(
                "wrapped key is in format 1 (bound to key and model ids only): register the "
                "model again, or serve with --allow-wrap-format-1 until it is",
                reason="unwrap_format_1",
            )
        aad = self._aad(key_id, model_id, context if blob[:1] == _VERSION_2 else None)
        try:
            return self._aead.decrypt(blob[1:13], blob[13:], aad)
        except InvalidTag:
            raise UnwrapError("wrapped key does not authenticate", reason="unwrap") from None


def model_context(
    *, model_version: int, policy_json: str, policy_digest: str, manifest_digest: bytes
) -> bytes:
    """What a format-2 wrapped key of a model's row is bound to, besides its ids: the model
    version (u32), SHA-256 of the policy text, the policy digest (length-prefixed ASCII) and
    the sealed manifest's digest (32 bytes). Fixed layout, so one row has one context."""
    digest = policy_digest.encode("ascii")
    return (
        model_version.to_bytes(4, "big")
        + hashlib.sha256(policy_json.encode("utf-8")).digest()
        + len(digest).to_bytes(2, "big")
        + digest
        + manifest_digest
    )


def create_private(path: Path, data: bytes) -> bool:
    """Create ``path`` (0600) holding ``data``, whole or not at all; False if it existed.

    Written and synced under a hidden temporary name, then linked to ``path`` (which fails if
    the name exists, so the first of two creators wins) and the directory synced: a broker
    killed while creating its keys left an empty key file under the final name, and then
    never started again (each key loader refuses an empty file)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


def load_or_create_master_key(path: Path) -> bytes:
    """Read the master key file, creating it (0600, 32 random bytes) if it does not exist.

    Refuses a file that others can read: a master key readable by the group or world is a leak.
    """
    fresh = secrets.token_bytes(MASTER_KEY_BYTES)
    if create_private(path, fresh):
        return fresh
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(
            f"{path}: master key file must not be accessible by group/others (chmod 600)"
        )
    key = path.read_bytes()
    if len(key) != MASTER_KEY_BYTES:
        raise InputError(f"{path}: master key file must hold exactly {MASTER_KEY_BYTES} bytes")
    return key
